use std::time::Duration;
use tower_mq_core::{Guarantee, Position};

use tokio_test::assert_ready_ok;
use tower::{Layer, Service, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Error, ErrorKind, Message, Operation, Receipt};
use tower_test::mock;

use super::names::{self, outcomes};
use super::MetricsLayer;
use crate::test_metrics::Recorded;

fn receipt() -> Receipt {
    Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(1))
}

const PUBLISH: [(&str, &str); 3] = [
    ("broker", "kafka"),
    ("destination", "orders"),
    ("operation", "publish"),
];

#[tokio::test(start_paused = true)]
async fn records_duration_outcome_and_in_flight() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let (inner, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(3);
    let mut svc = mock::Spawn::new(MetricsLayer::publish("kafka").layer(inner));

    assert_ready_ok!(svc.poll_ready());
    let ok = tokio::spawn(svc.call(Message::new("orders", "a")));
    let (_, reply) = handle.next_request().await.expect("request");
    assert_eq!(m.gauge(names::IN_FLIGHT, &PUBLISH), Some(1.0));
    tokio::time::advance(Duration::from_millis(250)).await;
    reply.send_response(receipt());
    ok.await.expect("join").expect("ok");

    assert_ready_ok!(svc.poll_ready());
    let transient = tokio::spawn(svc.call(Message::new("orders", "b")));
    let (_, reply) = handle.next_request().await.expect("request");
    reply.send_error(Error::transient("kafka", Operation::Publish));
    transient.await.expect("join").expect_err("transient");

    assert_ready_ok!(svc.poll_ready());
    let permanent = tokio::spawn(svc.call(Message::new("orders", "c")));
    let (_, reply) = handle.next_request().await.expect("request");
    tokio::time::advance(Duration::from_millis(5)).await;
    reply.send_error(Error::permanent("kafka", Operation::Publish));
    permanent.await.expect("join").expect_err("permanent");

    let with = |outcome| {
        let mut l = PUBLISH.to_vec();
        l.push(("outcome", outcome));
        l
    };
    assert_eq!(m.counter(names::MESSAGES_TOTAL, &with(outcomes::OK)), 1);
    assert_eq!(
        m.counter(names::MESSAGES_TOTAL, &with(outcomes::TRANSIENT_ERROR)),
        1
    );
    assert_eq!(
        m.counter(names::MESSAGES_TOTAL, &with(outcomes::PERMANENT_ERROR)),
        1
    );
    assert_eq!(m.gauge(names::IN_FLIGHT, &PUBLISH), Some(0.0));
    assert_eq!(
        m.histogram(names::OPERATION_DURATION, &with(outcomes::OK)),
        [0.25]
    );
    assert_eq!(
        m.histogram(names::OPERATION_DURATION, &with(outcomes::PERMANENT_ERROR)),
        [0.005]
    );
}

#[tokio::test(start_paused = true)]
async fn handler_side_labels_come_from_the_delivery_and_custom_classifier_applies() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let handler = tower::service_fn(|_: Delivery| async { Err::<(), BoxError>("odd".into()) });
    let layer = MetricsLayer::handle("redis").classifier(|_: &BoxError| ErrorKind::Permanent);
    let delivery = Delivery::unacknowledged(Message::new("jobs", "x"));
    layer
        .layer(handler)
        .oneshot(delivery)
        .await
        .expect_err("fails");
    let labels = [
        ("broker", "redis"),
        ("destination", "jobs"),
        ("operation", "handle"),
        ("outcome", "permanent_error"),
    ];
    assert_eq!(m.counter(names::MESSAGES_TOTAL, &labels), 1);
}

#[tokio::test(start_paused = true)]
async fn the_destination_label_can_be_turned_off() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let publisher = tower::service_fn(|_: Message| async { Ok::<_, BoxError>(receipt()) });
    let publisher = MetricsLayer::publish("nats")
        .destination_label(false)
        .layer(publisher);
    for reply_queue in ["_INBOX.a1", "_INBOX.b2"] {
        publisher
            .clone()
            .oneshot(Message::new(reply_queue, "x"))
            .await
            .expect("ok");
    }
    let all = [("broker", "nats"), ("destination", ""), ("outcome", "ok")];
    assert_eq!(m.counter(names::MESSAGES_TOTAL, &all), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_leaves_the_in_flight_gauge() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let (inner, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(1);
    let mut svc = mock::Spawn::new(MetricsLayer::publish("kafka").layer(inner));
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Message::new("orders", "a"));
    assert_eq!(m.gauge(names::IN_FLIGHT, &PUBLISH), Some(1.0));
    drop(fut);
    assert_eq!(m.gauge(names::IN_FLIGHT, &PUBLISH), Some(0.0));
    assert_eq!(m.counter(names::MESSAGES_TOTAL, &PUBLISH), 0);
}

#[cfg(feature = "prometheus")]
#[test]
fn prometheus_exposition_uses_the_documented_buckets() {
    let recorder = super::prometheus_builder()
        .expect("valid buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::histogram!(names::OPERATION_DURATION, "operation" => "publish").record(0.003);
        metrics::histogram!(names::BATCH_SIZE).record(7.0);
    });
    let text = handle.render();
    assert!(
        text.contains(
            r#"messaging_operation_duration_seconds_bucket{operation="publish",le="0.005"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"messaging_operation_duration_seconds_bucket{operation="publish",le="0.0025"} 0"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"messaging_batch_size_bucket{le="10"} 1"#),
        "{text}"
    );
}

/// Metric names in a rules file: every `messaging_…` token, histogram series suffixes
/// removed.
fn metric_names_in(rules: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = rules;
    while let Some(at) = rest.find("messaging_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if base.ends_with("_seconds") || base.ends_with("_size") {
                    name = base;
                }
            }
        }
        found.push(name.to_owned());
        rest = &tail[end..];
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_metric_in_the_alerting_rules_is_one_the_crate_emits() {
    let rules = include_str!("../../prometheus/alerts.yml");
    let used = metric_names_in(rules);
    for expected in [
        names::MESSAGES_TOTAL,
        names::OPERATION_DURATION,
        names::IN_FLIGHT,
        names::DEAD_LETTERS_TOTAL,
        names::CIRCUIT_STATE,
    ] {
        assert!(used.iter().any(|u| u == expected), "rules cover {expected}");
    }
    for name in &used {
        assert!(
            names::ALL.contains(&name.as_str()),
            "alerts.yml uses `{name}`, which no layer emits (see metrics::names)"
        );
    }
}

#[test]
fn names_follow_prometheus_conventions() {
    for name in names::ALL {
        assert!(name.starts_with("messaging_"), "{name}");
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn destinations_past_the_cache_bound_are_still_recorded() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let publisher = tower::service_fn(|_: Message| async { Ok::<_, BoxError>(receipt()) });
    let mut publisher = MetricsLayer::publish("kafka").layer(publisher);
    let count =
        tower_mq_core::cache::DestinationCache::<super::handles::Handles>::DEFAULT_CAPACITY + 3;
    for round in 0..2 {
        for i in 0..count {
            let destination = format!("t{i}");
            publisher
                .ready()
                .await
                .expect("ready")
                .call(Message::new(destination, "x"))
                .await
                .expect("ok");
        }
        for i in [0, count - 1] {
            let destination = format!("t{i}");
            let labels = [("destination", destination.as_str()), ("outcome", "ok")];
            assert_eq!(m.counter(names::MESSAGES_TOTAL, &labels), round + 1);
            let in_flight = [("destination", destination.as_str())];
            assert_eq!(m.gauge(names::IN_FLIGHT, &in_flight), Some(0.0));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_service_records_into_the_recorder_it_was_first_called_under() {
    let layer = MetricsLayer::publish("kafka");
    for _ in 0..2 {
        let (m, recorder) = Recorded::new();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let publisher = tower::service_fn(|_: Message| async { Ok::<_, BoxError>(receipt()) });
        layer
            .layer(publisher)
            .oneshot(Message::new("orders", "x"))
            .await
            .expect("ok");
        let mut labels = PUBLISH.to_vec();
        labels.push(("outcome", outcomes::OK));
        assert_eq!(m.counter(names::MESSAGES_TOTAL, &labels), 1);
    }
}
