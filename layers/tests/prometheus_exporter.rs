//! `install_prometheus` serves the layers' metrics over HTTP, with the documented
//! buckets. It installs the process-wide recorder, so it lives alone in this binary.

use std::time::Duration;
use tower_mq_core::{Guarantee, Position};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{service_fn, Layer, ServiceExt};
use tower_mq_core::{BoxError, Error, Message, Operation, Receipt};
use tower_mq_layers::metrics::{install_prometheus, MetricsLayer};

async fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the exporter listens once installed");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    response
}

#[tokio::test]
async fn serves_the_layers_metrics_over_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    install_prometheus(([127, 0, 0, 1], port)).expect("exporter installed");

    let publisher = service_fn(|m: Message| async move {
        if m.payload().is_empty() {
            return Err::<Receipt, BoxError>(Error::permanent("memory", Operation::Publish).into());
        }
        Ok(Receipt::new("memory", m.destination(), Guarantee::Stored)
            .with_position(Position::Sequence(1)))
    });
    let publisher = MetricsLayer::publish("memory").layer(publisher);
    publisher
        .clone()
        .oneshot(Message::new("orders", "x"))
        .await
        .expect("published");
    publisher
        .oneshot(Message::new("orders", ""))
        .await
        .expect_err("refused");

    let response = tokio::time::timeout(Duration::from_secs(30), scrape(port))
        .await
        .expect("scrape answered in time");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for expected in [
        r#"messaging_messages_total{broker="memory",destination="orders",operation="publish",outcome="ok"} 1"#,
        r#"messaging_messages_total{broker="memory",destination="orders",operation="publish",outcome="permanent_error"} 1"#,
        r#"messaging_operation_duration_seconds_bucket{broker="memory",destination="orders",operation="publish",outcome="ok",le="0.0005"}"#,
        r#"messaging_operation_duration_seconds_bucket{broker="memory",destination="orders",operation="publish",outcome="ok",le="30"}"#,
        r#"messaging_in_flight{broker="memory",destination="orders",operation="publish"} 0"#,
    ] {
        assert!(
            response.contains(expected),
            "missing {expected}\n{response}"
        );
    }
}
