//! Kafka behaviour on librdkafka's mock cluster (an in-process broker speaking the
//! Kafka protocol): fault injection (broker down and up, request errors, latency),
//! order per key, offsets that never pass an unfinished message, commits on
//! revocation, and a full producer queue as readiness.

#![cfg(feature = "kafka")]

#[path = "support/kafka_mock_cluster.rs"]
mod kafka_mock_cluster;
#[path = "support/waits.rs"]
mod waits;

/// Test names read `kafka_mock::<case>`.
mod kafka_mock {
    use super::kafka_mock_cluster::{MockKafka, ALL_BROKERS};
    use super::waits::{next_within, until};
    use std::collections::BTreeMap;
    use std::future::poll_fn;
    use std::time::Duration;

    use futures_util::future::join_all;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use tower::{Service, ServiceBuilder, ServiceExt};
    use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher};
    use tower_mq::layers::classify::DefaultClassifier;
    use tower_mq::{Delivery, ErrorKind, Guarantee, Message, Operation, Position, Receipt};

    /// The bound on waiting for something that should happen.
    const WAIT: Duration = Duration::from_secs(20);
    /// How long a test watches for something that should not happen.
    const QUIET: Duration = Duration::from_millis(500);

    fn config(cluster: &MockKafka) -> Config {
        Config::new(cluster.bootstrap_servers())
            .set("reconnect.backoff.max.ms", "100")
            .set_consumer("session.timeout.ms", "6000")
            .set_consumer("heartbeat.interval.ms", "500")
    }

    fn unique(name: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn publish(publisher: &mut Publisher, message: Message) -> Receipt {
        let destination = message.destination().to_owned();
        let ready = tokio::time::timeout(WAIT, publisher.ready())
            .await
            .unwrap_or_else(|_| panic!("publisher for {destination} not ready within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("publisher for {destination} failed: {e}"));
        tokio::time::timeout(WAIT, ready.call(message))
            .await
            .unwrap_or_else(|_| panic!("publishing to {destination} took over {WAIT:?}"))
            .unwrap_or_else(|e| panic!("publishing to {destination} failed: {e}"))
    }

    async fn joined(config: &Config, topic: &str, group: &str) -> Consumer {
        let mut consumer = Consumer::subscribe(config, ConsumerConfig::new(topic, group))
            .await
            .unwrap_or_else(|e| panic!("subscribing to {topic} failed: {e}"));
        consumer
            .wait_for_assignment(WAIT)
            .await
            .unwrap_or_else(|e| panic!("joining {group} failed: {e}"));
        consumer
    }

    async fn recv(consumer: &mut Consumer, what: &str) -> Delivery {
        next_within(consumer, what, WAIT).await
    }

    fn text(delivery: &Delivery) -> String {
        String::from_utf8_lossy(delivery.message().payload()).into_owned()
    }

    /// The group's committed offset of partition 0.
    async fn committed(config: &Config, group: &str, topic: &str) -> Option<i64> {
        let lags = Admin::new(config)
            .expect("admin client")
            .consumer_group_lag(group, topic)
            .await
            .unwrap_or_else(|e| panic!("lag of {group} on {topic}: {e}"));
        lags.iter()
            .find(|l| l.partition == 0)
            .and_then(|l| l.committed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_while_the_broker_is_down_complete_once_it_is_back() {
        let cluster = MockKafka::start(1);
        let topic = unique("down-up");
        cluster.create_topic(&topic, 1);
        let config = config(&cluster);
        let mut publisher = Publisher::new(&config).expect("publisher");
        publish(&mut publisher, Message::new(&topic, "before")).await;

        cluster.broker_down(ALL_BROKERS);
        let pending: Vec<_> = (0..5)
            .map(|i| {
                let publisher = publisher.clone();
                let message = Message::new(&topic, format!("during-{i}"));
                tokio::spawn(publisher.oneshot(message))
            })
            .collect();
        let mut all = join_all(pending);
        assert!(
            tokio::time::timeout(QUIET, &mut all).await.is_err(),
            "publishes completed while the broker was down"
        );
        cluster.broker_up(ALL_BROKERS);
        let receipts = tokio::time::timeout(WAIT, all)
            .await
            .expect("publishes did not complete after the broker came back");
        let mut offsets: Vec<i64> = receipts
            .into_iter()
            .map(|r| {
                match r
                    .expect("task")
                    .expect("publish after broker_up")
                    .position()
                {
                    Some(&Position::Offset { offset, .. }) => offset,
                    other => panic!("not a Kafka position: {other:?}"),
                }
            })
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, [1, 2, 3, 4, 5], "stored once each, after `before`");

        let mut consumer = joined(&config, &topic, &unique("readers")).await;
        let got: Vec<String> = {
            let mut got = Vec::new();
            for _ in 0..6 {
                got.push(text(&recv(&mut consumer, "a message").await));
            }
            got
        };
        assert_eq!(got[0], "before");
        let mut during = got[1..].to_vec();
        during.sort();
        assert_eq!(
            during,
            (0..5).map(|i| format!("during-{i}")).collect::<Vec<_>>()
        );
    }

    /// Kafka has no priority and no per-message TTL: publishing either is a permanent
    /// error, or, with `ignore_unsupported`, the record is published without them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsupported_properties_are_refused_or_left_out_when_the_config_says_so() {
        let cluster = MockKafka::start(1);
        let topic = unique("unsupported");
        cluster.create_topic(&topic, 1);
        let strict = config(&cluster);
        let mut publisher = Publisher::new(&strict).expect("publisher");
        for message in [
            Message::new(&topic, "p").with_priority(7),
            Message::new(&topic, "t").with_ttl(Duration::from_secs(9)),
        ] {
            let err = publisher
                .ready()
                .await
                .expect("ready")
                .call(message)
                .await
                .expect_err("Kafka cannot honour it");
            assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
            assert_eq!(err.destination(), Some(topic.as_str()), "{err}");
        }

        let lenient = strict.clone().ignore_unsupported(true);
        let mut publisher = Publisher::new(&lenient).expect("publisher");
        let sent = Message::new(&topic, "published without them")
            .with_priority(7)
            .with_ttl(Duration::from_secs(9))
            .with_persistent(false)
            .with_header("tenant", "acme");
        publish(&mut publisher, sent).await;
        let mut consumer = joined(&lenient, &topic, &unique("readers")).await;
        let got = recv(&mut consumer, "the message").await;
        let got = got.message();
        assert_eq!(got.payload().as_ref(), b"published without them");
        assert_eq!(got.priority(), None);
        assert_eq!(got.ttl(), None);
        // Kafka stores every record: a non-persistent message is stored too.
        assert!(got.is_persistent());
        assert_eq!(got.headers().get_str("tenant"), Some("acme"));
        assert_eq!(
            got.headers().len(),
            1,
            "nothing but the user's header is written: {got:?}"
        );
    }

    /// A record over `message.max.bytes` is a permanent error naming the topic, and
    /// the publisher goes on with the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversize_record_is_a_permanent_error_and_the_next_goes_through() {
        let cluster = MockKafka::start(1);
        let topic = unique("oversize");
        cluster.create_topic(&topic, 1);
        let config = config(&cluster).set_producer("message.max.bytes", "100000");
        let mut publisher = Publisher::new(&config).expect("publisher");
        let err = publisher
            .ready()
            .await
            .expect("ready")
            .call(Message::new(&topic, vec![b'x'; 200_000]))
            .await
            .expect_err("over message.max.bytes");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.operation(), Operation::Publish, "{err}");
        assert_eq!(err.destination(), Some(topic.as_str()), "{err}");
        let shown = format!("{err} {:?}", std::error::Error::source(&err));
        assert!(shown.contains("too large"), "{shown}");
        publish(&mut publisher, Message::new(&topic, "small")).await;
    }

    /// A nack publishes the message to the retry topic with its delivery count
    /// incremented and moves the original's commit point past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nack_publishes_to_the_retry_topic_with_the_count_incremented() {
        let cluster = MockKafka::start(1);
        let (topic, retry) = (unique("work"), unique("work-retry"));
        cluster.create_topic(&topic, 1);
        cluster.create_topic(&retry, 1);
        let config = config(&cluster).set_consumer("auto.commit.interval.ms", "600000");
        let mut publisher = Publisher::new(&config).expect("publisher");
        publish(&mut publisher, Message::new(&topic, "job").with_key("k")).await;
        let group = unique("workers");
        let mut consumer = Consumer::subscribe(
            &config,
            ConsumerConfig::new(&topic, &group).retry_topic(&retry),
        )
        .await
        .expect("consumer");
        let first = recv(&mut consumer, "the job").await;
        assert_eq!(first.delivery_count(), 1);
        first.nack(None).await.expect("nack");
        consumer.commit().await.expect("commit");
        assert_eq!(committed(&config, &group, &topic).await, Some(1));

        let mut retries = joined(&config, &retry, &unique("retriers")).await;
        let again = recv(&mut retries, "the job on the retry topic").await;
        assert_eq!(text(&again), "job");
        assert_eq!(again.message().key_str(), Some("k"));
        assert_eq!(again.delivery_count(), 2);
        again.nack(None).await.expect("nack on the retry topic");
        let third = recv(&mut retries, "the job again").await;
        assert_eq!(third.delivery_count(), 3);
        third.ack().await.expect("ack");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retriable_request_errors_are_retried_by_librdkafka() {
        let cluster = MockKafka::start(1);
        let topic = unique("retriable");
        cluster.create_topic(&topic, 1);
        let mut publisher = Publisher::new(&config(&cluster)).expect("publisher");
        publish(&mut publisher, Message::new(&topic, "warm-up")).await;
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            ],
        );
        let receipt = publish(&mut publisher, Message::new(&topic, "through errors")).await;
        assert_eq!(
            receipt,
            Receipt::new("kafka", topic.clone(), Guarantee::Stored).with_position(
                Position::Offset {
                    partition: 0,
                    offset: 1
                }
            ),
            "stored once despite three failed attempts"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permanent_request_errors_fail_with_a_permanent_error() {
        let cluster = MockKafka::start(1);
        let topic = unique("permanent");
        cluster.create_topic(&topic, 1);
        let mut publisher = Publisher::new(&config(&cluster)).expect("publisher");
        publish(&mut publisher, Message::new(&topic, "warm-up")).await;
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        let err = tokio::time::timeout(
            WAIT,
            publisher
                .ready()
                .await
                .expect("ready")
                .call(Message::new(&topic, "denied")),
        )
        .await
        .expect("the publish did not finish")
        .expect_err("the broker denied the publish");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.broker(), "kafka", "{err}");
        assert_eq!(err.operation(), Operation::Publish, "{err}");
        assert_eq!(err.destination(), Some(topic.as_str()), "{err}");

        // A message too large for the client is refused before it is queued.
        let big =
            Config::new(cluster.bootstrap_servers()).set_producer("message.max.bytes", "1000");
        let mut small = Publisher::new(&big).expect("publisher");
        let err = small
            .ready()
            .await
            .expect("ready")
            .call(Message::new(&topic, vec![7u8; 5000]))
            .await
            .expect_err("a record over message.max.bytes");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.destination(), Some(topic.as_str()), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn latency_beyond_a_timeout_is_a_transient_failure() {
        let cluster = MockKafka::start(1);
        let topic = unique("latency");
        cluster.create_topic(&topic, 1);
        let publisher = Publisher::new(&config(&cluster)).expect("publisher");
        publisher
            .clone()
            .oneshot(Message::new(&topic, "warm-up"))
            .await
            .expect("warm-up");

        cluster.round_trip_time(ALL_BROKERS, Duration::from_millis(1500));
        let stack = ServiceBuilder::new()
            .timeout(Duration::from_millis(200))
            .service(publisher.clone());
        let err = stack
            .oneshot(Message::new(&topic, "slow"))
            .await
            .expect_err("a 1.5 s round trip outlasts a 200 ms timeout");
        assert_eq!(
            DefaultClassifier::new().classify_dyn(&*err),
            ErrorKind::Transient
        );

        cluster.round_trip_time(ALL_BROKERS, Duration::ZERO);
        let receipt = tokio::time::timeout(WAIT, publisher.oneshot(Message::new(&topic, "fast")))
            .await
            .expect("publish after the latency went away")
            .expect("publish");
        // The timed-out publish was not withdrawn: librdkafka delivered it too.
        assert_eq!(
            receipt,
            Receipt::new("kafka", topic, Guarantee::Stored).with_position(Position::Offset {
                partition: 0,
                offset: 2
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_with_one_key_keep_their_order_and_partition() {
        const KEYS: usize = 6;
        const PER_KEY: usize = 40;
        let cluster = MockKafka::start(1);
        let topic = unique("order");
        cluster.create_topic(&topic, 4);
        let config = config(&cluster);
        let publisher = Publisher::new(&config).expect("publisher");
        // Publish concurrently per key, one at a time within a key.
        let tasks = (0..KEYS).map(|k| {
            let publisher = publisher.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let mut partitions = Vec::new();
                for i in 0..PER_KEY {
                    let message =
                        Message::new(&topic, format!("{k}:{i}")).with_key(format!("key-{k}"));
                    match publisher
                        .clone()
                        .oneshot(message)
                        .await
                        .expect("publish")
                        .position()
                    {
                        Some(&Position::Offset { partition, .. }) => partitions.push(partition),
                        other => panic!("not a Kafka position: {other:?}"),
                    }
                }
                partitions
            })
        });
        let mut used = std::collections::BTreeSet::new();
        for partitions in join_all(tasks).await {
            let partitions = partitions.expect("publishing task");
            assert!(
                partitions.windows(2).all(|w| w[0] == w[1]),
                "one key, one partition"
            );
            used.insert(partitions[0]);
        }
        assert!(
            used.len() > 1,
            "six keys all hashed to one of four partitions"
        );

        let mut consumer = joined(&config, &topic, &unique("ordered")).await;
        let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for _ in 0..KEYS * PER_KEY {
            let delivery = recv(&mut consumer, "a keyed message").await;
            let body = text(&delivery);
            let (k, i) = body.split_once(':').expect("key:index");
            assert_eq!(
                delivery.message().key_str(),
                Some(format!("key-{k}").as_str())
            );
            seen.entry(k.to_owned())
                .or_default()
                .push(i.parse().expect("index"));
            delivery.ack().await.expect("ack");
        }
        for (k, indexes) in seen {
            assert_eq!(
                indexes,
                (0..PER_KEY).collect::<Vec<_>>(),
                "order of key {k}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_are_never_committed_past_an_unfinished_message() {
        let cluster = MockKafka::start(1);
        let topic = unique("unfinished");
        cluster.create_topic(&topic, 1);
        // Only explicit commits here, so what is committed is what was stored.
        let config = config(&cluster).set_consumer("auto.commit.interval.ms", "600000");
        let mut publisher = Publisher::new(&config).expect("publisher");
        for i in 0..10 {
            publish(&mut publisher, Message::new(&topic, i.to_string())).await;
        }
        let group = unique("careful");
        let mut consumer = joined(&config, &topic, &group).await;
        let mut deliveries = Vec::new();
        for i in 0..10 {
            let delivery = recv(&mut consumer, &format!("message {i}")).await;
            assert_eq!(text(&delivery), i.to_string());
            deliveries.push(delivery);
        }
        assert_eq!(consumer.in_flight(&topic, 0), 10);
        // Handlers finish out of order; message 3 is still running.
        for i in [9, 0, 5, 1, 2, 8, 4, 6, 7] {
            deliveries[i].ack().await.expect("ack");
        }
        consumer.commit().await.expect("commit");
        assert_eq!(
            committed(&config, &group, &topic).await,
            Some(3),
            "commit stops at the unfinished message 3"
        );
        assert_eq!(consumer.in_flight(&topic, 0), 1);

        deliveries[3].ack().await.expect("ack");
        consumer.commit().await.expect("commit");
        assert_eq!(
            committed(&config, &group, &topic).await,
            Some(10),
            "everything finished"
        );

        let lag = Admin::new(&config)
            .expect("admin")
            .consumer_group_lag(&group, &topic)
            .await
            .expect("lag");
        assert_eq!(lag.len(), 1);
        assert_eq!((lag[0].high_watermark, lag[0].lag), (10, 0));
    }

    /// Records librdkafka fetched ahead (and the consumer's own read-ahead) that no
    /// handler saw are simply not committed: dropping the consumer revokes its partition
    /// at once, and the next owner reads them as first deliveries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_read_ahead_but_never_handed_out_go_to_the_next_owner_uncounted() {
        let cluster = MockKafka::start(1);
        let topic = unique("read-ahead");
        cluster.create_topic(&topic, 1);
        let config = config(&cluster).set_consumer("auto.commit.interval.ms", "600000");
        let mut publisher = Publisher::new(&config).expect("publisher");
        for i in 0..6 {
            publish(&mut publisher, Message::new(&topic, i.to_string())).await;
        }
        let group = unique("deployed");
        let mut first = joined(&config, &topic, &group).await;
        let taken = recv(&mut first, "message 0").await;
        assert_eq!(text(&taken), "0");
        taken.ack().await.expect("ack");
        drop(first);

        let started = tokio::time::Instant::now();
        let mut second = joined(&config, &topic, &group).await;
        assert_eq!(
            committed(&config, &group, &topic).await,
            Some(1),
            "only the handled message is committed"
        );
        for i in 1..6 {
            let delivery = recv(&mut second, &format!("message {i}")).await;
            assert_eq!(text(&delivery), i.to_string());
            assert_eq!(
                delivery.delivery_count(),
                1,
                "message {i} reached no handler"
            );
            delivery.ack().await.expect("ack");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the next owner waited {:?}",
            started.elapsed()
        );
    }

    /// Revocation commits at once, never past an unfinished message, and the next owner
    /// counts what it reads again as redeliveries.
    ///
    /// The revocation here comes from the member leaving (dropping the consumer). A
    /// rebalance caused by a new member revokes through the same callback, but the mock
    /// cluster refuses offset commits while such a rebalance is under way
    /// (REBALANCE_IN_PROGRESS in its JOINING state), where Kafka accepts them from members
    /// of the current generation; tests/kafka.rs shows that path on tansu.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoked_partitions_are_committed_at_once_up_to_the_first_unfinished() {
        let cluster = MockKafka::start(1);
        let (worked, untouched) = (unique("revoke-worked"), unique("revoke-untouched"));
        cluster.create_topic(&worked, 1);
        cluster.create_topic(&untouched, 1);
        // No periodic commit: only the revocation can commit.
        let config = config(&cluster).set_consumer("auto.commit.interval.ms", "600000");
        let mut publisher = Publisher::new(&config).expect("publisher");
        for i in 0..6 {
            publish(&mut publisher, Message::new(&worked, i.to_string())).await;
        }
        for i in 0..2 {
            publish(&mut publisher, Message::new(&untouched, i.to_string())).await;
        }
        let group = unique("rebalancing");
        let mut first = Consumer::subscribe(
            &config,
            ConsumerConfig::new(&worked, &group).topic(&untouched),
        )
        .await
        .expect("first member");
        let mut held = BTreeMap::new();
        for _ in 0..8 {
            let delivery = recv(&mut first, "a message").await;
            let at = (delivery.message().destination().to_owned(), text(&delivery));
            held.insert(at, delivery);
        }
        for i in ["0", "1", "2", "4"] {
            held[&(worked.clone(), i.to_owned())]
                .ack()
                .await
                .expect("ack");
        }
        assert_eq!(
            committed(&config, &group, &worked).await,
            None,
            "nothing committed yet"
        );

        drop(first);
        until("a commit on revocation", WAIT, async || {
            committed(&config, &group, &untouched).await.is_some()
        })
        .await;
        assert_eq!(
            committed(&config, &group, &worked).await,
            Some(3),
            "up to the unfinished message 3"
        );
        // Nothing was settled there: only the revocation commits offset 0.
        assert_eq!(committed(&config, &group, &untouched).await, Some(0));
        // Settling a delivery of a revoked partition is accepted and changes nothing.
        held[&(worked.clone(), "3".to_owned())]
            .ack()
            .await
            .expect("late ack");
        assert_eq!(committed(&config, &group, &worked).await, Some(3));

        let mut second = joined(&config, &worked, &group).await;
        for i in 3..6 {
            let delivery = recv(&mut second, &format!("message {i} again")).await;
            assert_eq!(text(&delivery), i.to_string());
            assert_eq!(
                delivery.delivery_count(),
                2,
                "message {i} was handed out before"
            );
            delivery.ack().await.expect("ack");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_producer_queue_makes_poll_ready_pending() {
        const CAPACITY: usize = 4;
        let cluster = MockKafka::start(1);
        let topic = unique("queue-full");
        cluster.create_topic(&topic, 1);
        let config = config(&cluster).queue_capacity(CAPACITY);
        let mut publisher = Publisher::new(&config).expect("publisher");
        publish(&mut publisher, Message::new(&topic, "warm-up")).await;

        cluster.broker_down(ALL_BROKERS);
        let mut pending = Vec::new();
        for i in 0..CAPACITY {
            let ready = tokio::time::timeout(WAIT, publisher.ready())
                .await
                .expect("room in the queue")
                .expect("ready");
            pending.push(tokio::spawn(
                ready.call(Message::new(&topic, i.to_string())),
            ));
        }
        let mut clone = publisher.clone();
        // The queue holds CAPACITY messages: readiness waits instead of failing.
        let mut waiting = tokio_test::task::spawn(poll_fn(|cx| publisher.poll_ready(cx)));
        tokio_test::assert_pending!(waiting.poll());
        assert!(
            tokio::time::timeout(QUIET, &mut waiting).await.is_err(),
            "poll_ready turned ready while the queue was full"
        );
        // A call made regardless waits in its future for room; it does not fail.
        let forced = tokio::spawn(clone.call(Message::new(&topic, "forced")));

        cluster.broker_up(ALL_BROKERS);
        tokio::time::timeout(WAIT, waiting)
            .await
            .expect("poll_ready stayed pending after the queue drained")
            .expect("ready");
        for result in join_all(pending).await {
            result.expect("task").expect("queued publish");
        }
        tokio::time::timeout(WAIT, forced)
            .await
            .expect("the forced publish did not finish")
            .expect("task")
            .expect("the forced publish waited for room and succeeded");
    }
}
