//! ZeroMQ through a tower stack: a PUSH publisher with retry and timeout feeding PULL
//! workers, and request/reply from a DEALER requester to a ROUTER served by a handler.
//!
//! ```sh
//! cargo run --example zeromq --no-default-features --features zeromq
//! ```
//!
//! No broker: the sockets bind and connect on loopback ports the example picks. The
//! stack is the project's retry (jittered backoff, transient errors only), circuit
//! breaker and timeout layers.

use std::future::IntoFuture;
use std::time::Duration;

use futures_util::StreamExt;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::zeromq::{Config, Consumer, Publisher, Requester};
use tower_mq::{serve, Delivery, Message, Replier};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A PULL worker binds a free port; the PUSH publisher connects and redials it.
    let mut worker = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0")).await?;
    let jobs = worker.endpoints()[0].clone();

    // First layer added is outermost: each retry attempt gets its own 2 s timeout, and
    // the timeout also bounds waiting in poll_ready for a peer to connect.
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(30),
        ))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(Publisher::push(&Config::new().connect(&jobs)).await?);

    for i in 0..3 {
        let job = Message::new("jobs.resize", format!("{{\"image\":{i}}}"))
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let receipt = publisher.clone().oneshot(job).await?;
        println!("published: {receipt}");
    }
    for _ in 0..3 {
        let Some(delivery) = worker.next().await else {
            break;
        };
        let delivery = delivery?;
        println!(
            "worker got {} for tenant {:?}",
            String::from_utf8_lossy(delivery.message().payload()),
            delivery.message().headers().get_str("tenant")
        );
    }

    // Request/reply: a ROUTER serves, its replies go back to the requesting peer.
    let (requests, replies) = Consumer::router(&Config::new().bind("tcp://127.0.0.1:0")).await?;
    let rpc = requests.endpoints()[0].clone();
    let upper = service_fn(|request: Delivery| async move {
        Ok::<_, BoxError>(String::from_utf8_lossy(request.message().payload()).to_uppercase())
    });
    tokio::spawn(serve(requests, Replier::new(upper, replies)).into_future());

    let requester = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service(Requester::connect(&Config::new().connect(&rpc)).await?);
    let reply = requester
        .oneshot(Message::new("rpc.upper", "hello"))
        .await?;
    println!("reply: {}", String::from_utf8_lossy(reply.payload()));
    Ok(())
}
