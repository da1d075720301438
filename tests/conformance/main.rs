//! The conformance suite: one set of cases, run against every broker.
//!
//! Test names are `<fixture module>::<case>`, so `cargo test --test conformance --
//! redis::` runs one fixture and `-- ::priority_order` one case everywhere. See
//! README.md for how to add a broker or a case.
//!
//! Every case reports what it checked ([`fixture::Outcome`]): passed, or not applicable
//! to the broker with the reason. Once the run's last case has finished, a summary per
//! fixture (passed, not applicable with reasons, failed) is printed; see `summary.rs`.

/// Generates one `#[test]` per case for a [`fixture::Fixture`] type, in the module where
/// it is invoked (the broker's fixture file): `conformance!(MemoryFixture);`. Each test
/// runs its case on a multi-thread tokio runtime and records the case's
/// [`fixture::Outcome`] (or its failure) for the summary.
///
/// This is the one list of cases. A new case is a generic `async fn` in a file under
/// `cases/` plus one line here.
macro_rules! conformance {
    ($fixture:ty) => {
        conformance!(@cases $fixture;
            // cases/pubsub.rs
            pubsub::publish_subscribe,
            pubsub::concurrent_publishers_and_subscribers_across_topics,
            pubsub::empty_payload,
            pubsub::large_payload,
            pubsub::headers_and_properties_round_trip,
            pubsub::invalid_destination_is_a_clear_permanent_error,
            pubsub::publisher_close_with_pending_work_loses_nothing,
            // cases/work_queue.rs
            work_queue::consumer_group_shares_work_without_duplicates,
            work_queue::group_keeps_messages_published_before_its_first_consumer,
            work_queue::closing_and_reopening_a_group_consumer_continues,
            work_queue::order_per_key,
            work_queue::publish_and_consume_through_the_reliability_stack,
            // cases/redelivery.rs
            redelivery::nack_redelivers_with_incremented_count,
            redelivery::unacked_messages_are_redelivered_after_close,
            redelivery::reject_dead_letters,
            redelivery::serve_dead_letters_after_repeated_failures,
            // cases/properties.rs
            properties::priority_order,
            properties::ttl_expiry,
            // cases/patterns.rs
            patterns::request_reply,
            patterns::request_timeout,
            patterns::fan_out,
            patterns::fan_out_partial_failure,
            // cases/reconnect.rs (exclusive: the broker goes down)
            reconnect::publish_and_consume_across_broker_restarts,
        );
    };
    (@cases $fixture:ty; $($theme:ident :: $case:ident),* $(,)?) => {
        /// The names libtest gives this module's tests, for the summary's count.
        pub fn test_names() -> Vec<String> {
            let module = module_path!().split_once("::").map_or("", |(_, m)| m);
            vec![$(format!("{module}::{}", stringify!($case))),*]
        }

        $(
            #[test]
            fn $case() {
                let record = crate::summary::Record::start(
                    <$fixture as crate::fixture::Fixture>::NAME,
                    concat!(stringify!($theme), "::", stringify!($case)),
                );
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the case");
                let outcome = runtime.block_on(async {
                    // Reconnect cases stop the broker: no other case may run meanwhile.
                    if stringify!($theme) == "reconnect" {
                        let _exclusive = crate::fixture::BROKER_LOCK.write().await;
                        crate::cases::$theme::$case::<$fixture>().await
                    } else {
                        let _shared = crate::fixture::BROKER_LOCK.read().await;
                        crate::cases::$theme::$case::<$fixture>().await
                    }
                });
                drop(runtime);
                record.finish(outcome);
            }
        )*
    };
}

#[path = "../support/harness.rs"]
mod harness;

mod cases;
mod fixture;
mod summary;

// Brokers: one module per fixture, each ending with `conformance!(TheFixture);`.
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "kafka")]
mod kafka_mock;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_pubsub;
#[cfg(feature = "zeromq")]
mod zeromq;

/// Every test of the suite by libtest's name (`<module>::<case>`): one line per fixture
/// module, gated as its `mod` line is.
fn test_names() -> Vec<String> {
    let mut names = memory::test_names();
    #[cfg(feature = "kafka")]
    names.extend(kafka::test_names());
    #[cfg(feature = "kafka")]
    names.extend(kafka_mock::test_names());
    #[cfg(feature = "nats")]
    names.extend(nats::test_names());
    #[cfg(feature = "nats")]
    names.extend(nats::jetstream::test_names());
    #[cfg(feature = "rabbitmq")]
    names.extend(rabbitmq::test_names());
    #[cfg(feature = "redis")]
    names.extend(redis::test_names());
    #[cfg(feature = "redis")]
    names.extend(redis_pubsub::test_names());
    #[cfg(feature = "zeromq")]
    names.extend(zeromq::test_names());
    names
}
