//! ZeroMQ through a tower stack: a PUSH publisher with retry and timeout feeding PULL
//! workers, and request/reply from a DEALER requester to a ROUTER served by a handler.
//!
//! ```sh
//! cargo run --example zeromq --no-default-features --features zeromq
//! ```
//!
//! No broker: the sockets bind and connect on loopback ports the example picks. The
//! retry layer here is tower's own with a small policy that retries what the error
//! classification calls transient (tower-mq-layers' retry and circuit breaker stack
//! the same way).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tower::retry::Policy;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::classify::DefaultClassifier;
use tower_mq::zeromq::{Config, Consumer, Publisher, Requester};
use tower_mq::{serve, Delivery, ErrorKind, Message, Receipt, Replier};

/// Retries transient failures up to 5 times with exponential backoff.
#[derive(Clone)]
struct RetryTransient {
    left: u32,
    backoff: Duration,
}

impl Policy<Message, Receipt, BoxError> for RetryTransient {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _: &mut Message,
        result: &mut Result<Receipt, BoxError>,
    ) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        if self.left == 0 || DefaultClassifier::new().classify_dyn(&**err) != ErrorKind::Transient {
            return None;
        }
        self.left -= 1;
        let wait = self.backoff;
        self.backoff *= 2;
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, message: &Message) -> Option<Message> {
        Some(message.clone())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // A PULL worker binds a free port; the PUSH publisher connects and redials it.
    let mut worker = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0")).await?;
    let jobs = worker.endpoints()[0].clone();

    // First layer added is outermost: each retry attempt gets its own 2 s timeout, and
    // the timeout also bounds waiting in poll_ready for a peer to connect.
    let publisher = ServiceBuilder::new()
        .retry(RetryTransient {
            left: 5,
            backoff: Duration::from_millis(50),
        })
        .timeout(Duration::from_secs(2))
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
            delivery.message().headers().get("tenant")
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
