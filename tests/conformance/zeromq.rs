//! ZeroMQ: there is no broker, so the suite's topics meet at a forwarder device in the
//! test process, built from tower-mq's own ZeroMQ sockets on loopback ports:
//!
//! ```text
//! publishers: PUSH ──► hub PULL ──► hub PUB  ──► subscribers: SUB (prefix = topic)
//!                               └─► hub PUSH per group ──► group consumers: PULL
//! ```
//!
//! "Stopping the broker" drops every hub socket (peers see their connections close, as
//! if the device's process ended) and "starting" it binds the same ports again: the
//! suite's publishers and group consumers must redial by themselves, which is what the
//! reconnect case exercises.
//!
//! Two ZeroMQ properties the fixture deals with openly, by sending probe messages
//! (marked with a header, dropped by every stream the fixture hands out):
//! - slow joiner: a SUB's subscription reaches the PUB a moment after it connected,
//!   so `subscriber` probes until the new subscriber sees one;
//! - a PUSH learns that a PULL went away only when a write to it fails, so a group
//!   join probes the group until the hub's PUSH counts exactly the live members.
//!
//! What the reconnect case shows: every publish completes (a publisher waits in
//! `poll_ready` while the hub is down, redials, and its retry layer covers the wait),
//! and the stream resumes after each restart. What is lost (about a tenth of the
//! 10,000 at each restart, on this machine) is what the stopped hub held in its
//! queues and what publishers had written to the old connections before noticing they
//! were gone: ZeroMQ keeps nothing across a peer's restart. Nothing is duplicated.
//!
//! Request/reply does not go through the hub: it is ZeroMQ's own DEALER/ROUTER pair.
//! The request server is a ROUTER bound on a loopback port, answering through its
//! `Replies`; the requester is a DEALER connected to it. A request nobody answers
//! goes to a ROUTER that never replies (a DEALER with no peer at all waits in
//! `poll_ready`, which is backpressure, not a timeout).
//!
//! Every socket uses the envelope framing: the cases round-trip headers and properties.
//!
//! SUB subscriptions match prefixes while the suite's topics are exact names, so the
//! fixture's subscribers drop messages of longer topics that share the prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_mq::zeromq::{Config, Consumer, Framing, Publisher, Requester};
use tower_mq::{Delivery, Error, Message};

use crate::fixture::{
    BoxConsumer, BoxPublisher, BoxRequester, Capabilities, Fixture, Support, WAIT,
};

/// Every socket of the suite: the cases publish headers and properties, which only the
/// envelope carries (plain frames refuse them; the interop suite covers those).
fn envelope_config() -> Config {
    Config::new().framing(Framing::Envelope)
}

/// Marks the fixture's own probe messages.
const PROBE: &str = "x-tmq-conformance-probe";

fn endpoint(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("zeromq: no port in {endpoint}"))
}

fn is_probe(item: &Result<Delivery, Error>) -> bool {
    matches!(item, Ok(d) if d.message().headers().contains(PROBE))
}

/// Opens `what` on a port that may still be held by a socket being closed (bounded).
async fn bind_retrying<T, F, Fut>(what: &str, mut open: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open().await {
            Ok(socket) => return socket,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%e, "{what}: port not free yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("zeromq: binding {what} failed: {e}"),
        }
    }
}

struct Group {
    port: u16,
    publisher: Option<Publisher>,
    live: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Ports {
    ingress: u16,
    egress: u16,
}

/// The forwarder device: PULL in, PUB and one PUSH per group out.
struct Hub {
    ports: Mutex<Ports>,
    egress: Mutex<Option<Publisher>>,
    groups: Arc<Mutex<HashMap<(String, String), Group>>>,
    forwarding: Mutex<Option<JoinHandle<()>>>,
}

impl Hub {
    async fn start(&self) {
        let (ingress_port, egress_port) = {
            let ports = self.ports.lock().unwrap();
            (ports.ingress, ports.egress)
        };
        let config = envelope_config().bind(endpoint(egress_port));
        let egress = bind_retrying("the hub PUB", || Publisher::publish(&config)).await;
        let egress_port = port_of(&egress.endpoints()[0]);
        *self.egress.lock().unwrap() = Some(egress.clone());
        // Outputs first: group members redial; wait for them before opening the input.
        let keys: Vec<_> = self.groups.lock().unwrap().keys().cloned().collect();
        for key in keys {
            let port = self.groups.lock().unwrap()[&key].port;
            let config = envelope_config().bind(endpoint(port));
            let publisher = bind_retrying("a hub group PUSH", || Publisher::push(&config)).await;
            let live = self.groups.lock().unwrap()[&key].live.clone();
            let waited = tokio::time::timeout(WAIT, async {
                while publisher.peers() < live.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "zeromq: group members did not redial the hub"
            );
            if let Some(group) = self.groups.lock().unwrap().get_mut(&key) {
                group.publisher = Some(publisher);
            }
        }
        let config = envelope_config().bind(endpoint(ingress_port));
        let mut ingress = bind_retrying("the hub PULL", || Consumer::pull(&config)).await;
        let ingress_port = port_of(&ingress.endpoints()[0]);
        *self.ports.lock().unwrap() = Ports {
            ingress: ingress_port,
            egress: egress_port,
        };
        let groups = self.groups.clone();
        let task = tokio::spawn(async move {
            let mut egress = egress;
            while let Some(item) = ingress.next().await {
                let Ok(delivery) = item else { continue };
                let message = delivery.message().clone();
                forward(&mut egress, &message).await;
                let targets: Vec<Publisher> = groups
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|((topic, _), _)| topic == message.destination())
                    .filter_map(|(_, group)| group.publisher.clone())
                    .collect();
                for mut target in targets {
                    forward(&mut target, &message).await;
                }
            }
        });
        *self.forwarding.lock().unwrap() = Some(task);
    }

    async fn stop(&self) {
        let task = self.forwarding.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.egress.lock().unwrap().take();
        for group in self.groups.lock().unwrap().values_mut() {
            group.publisher = None;
        }
        // Down once the input refuses connections.
        let ingress = endpoint(self.ports.lock().unwrap().ingress);
        let addr = ingress.trim_start_matches("tcp://").to_owned();
        let closed = tokio::time::timeout(WAIT, async {
            while tokio::net::TcpStream::connect(&addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "zeromq: the hub still accepts on {ingress}");
    }

    /// The group's output, created (bound) on first use.
    async fn group(&self, topic: &str, group: &str) -> (Publisher, Arc<AtomicUsize>) {
        let key = (topic.to_owned(), group.to_owned());
        if let Some(existing) = self.groups.lock().unwrap().get(&key) {
            if let Some(publisher) = &existing.publisher {
                return (publisher.clone(), existing.live.clone());
            }
        }
        let publisher = Publisher::push(&envelope_config().bind("tcp://127.0.0.1:0"))
            .await
            .unwrap_or_else(|e| panic!("zeromq: binding a group PUSH failed: {e}"));
        let live = Arc::new(AtomicUsize::new(0));
        let mut groups = self.groups.lock().unwrap();
        let entry = groups.entry(key).or_insert(Group {
            port: port_of(&publisher.endpoints()[0]),
            publisher: Some(publisher),
            live,
        });
        let publisher = entry.publisher.clone().expect("the hub is running");
        (publisher, entry.live.clone())
    }
}

/// Sends to an output that has peers; an output without peers drops the message, as a
/// ZeroMQ device with nobody downstream does.
async fn forward(output: &mut Publisher, message: &Message) {
    if output.peers() == 0 {
        return;
    }
    if let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(1), output.ready()).await {
        let _ = ready.call(message.clone()).await;
    }
}

pub struct ZeromqFixture {
    hub: Hub,
    prober: Publisher,
    /// The ROUTER endpoint serving requests on each topic.
    routers: Mutex<HashMap<String, String>>,
    /// ROUTERs that never reply, kept open for the fixture's life.
    silent: Mutex<Vec<Consumer>>,
}

impl ZeromqFixture {
    fn ingress(&self) -> String {
        endpoint(self.hub.ports.lock().unwrap().ingress)
    }

    async fn publish_probe(&self, publisher: &mut Publisher, topic: &str) {
        let probe = Message::new(topic, "").with_header(PROBE, "1");
        let ready = tokio::time::timeout(WAIT, publisher.ready())
            .await
            .expect("zeromq: probe publisher not ready")
            .expect("zeromq: probe publisher failed");
        ready
            .call(probe)
            .await
            .expect("zeromq: publishing a probe failed");
    }

    /// Probes with `send` until `consumer` receives a probe.
    async fn until_probed(&self, consumer: &mut Consumer, mut send: impl AsyncProbe) {
        let probed = tokio::time::timeout(WAIT, async {
            loop {
                send.probe(self).await;
                if let Ok(Some(item)) =
                    tokio::time::timeout(Duration::from_millis(20), consumer.next()).await
                {
                    if is_probe(&item) {
                        return;
                    }
                }
            }
        })
        .await;
        assert!(
            probed.is_ok(),
            "zeromq: a new consumer never received a probe"
        );
    }
}

trait AsyncProbe {
    fn probe(&mut self, fx: &ZeromqFixture) -> impl std::future::Future<Output = ()>;
}

struct TopicProbe(Publisher, String);

impl AsyncProbe for TopicProbe {
    async fn probe(&mut self, fx: &ZeromqFixture) {
        fx.publish_probe(&mut self.0, &self.1).await;
    }
}

struct GroupProbe(Publisher, String);

impl AsyncProbe for GroupProbe {
    async fn probe(&mut self, _fx: &ZeromqFixture) {
        // Straight into the group's PUSH: it round-robins, so every member, dead ones
        // included, gets probes, and writing to a dead one is how the PUSH finds out.
        let probe = Message::new(&self.1, "").with_header(PROBE, "1");
        if let Ok(Ok(ready)) = tokio::time::timeout(WAIT, self.0.ready()).await {
            let _ = ready.call(probe).await;
        }
    }
}

/// Keeps a group's live-member count while its stream lives.
struct Member(Arc<AtomicUsize>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fixture for ZeromqFixture {
    const NAME: &'static str = "zeromq";
    const BROKER: &'static str = "zeromq";
    const CAPABILITIES: Capabilities = Capabilities {
        // The cases check deliveries say they are untracked.
        redelivery: Support::No(
            "ZeroMQ has no acknowledgements: deliveries are untracked, nothing is redelivered",
        ),
        exact_delivery_count: Support::No("ZeroMQ redelivers nothing"),
        dead_letters: Support::No("ZeroMQ has no broker to keep a dead-letter destination"),
        // The publisher refuses both with a permanent error (checked by the cases).
        priority: Support::No("ZeroMQ has no queue to order by priority"),
        ttl: Support::No("ZeroMQ has no queue to expire messages from"),
        ttl_dead_letters: Support::No("ZeroMQ has no queue to expire messages from"),
        durable_groups: Support::No(
            "a ZeroMQ group is the PUSH's currently connected PULLs: nothing is kept while \
             none is connected, and what was queued for a member that leaves goes with it",
        ),
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        let hub = Hub {
            ports: Mutex::new(Ports::default()),
            egress: Mutex::new(None),
            groups: Arc::default(),
            forwarding: Mutex::new(None),
        };
        hub.start().await;
        let ingress = endpoint(hub.ports.lock().unwrap().ingress);
        let prober = Publisher::push(&envelope_config().connect(&ingress))
            .await
            .unwrap_or_else(|e| panic!("zeromq: connecting to the hub at {ingress} failed: {e}"));
        ZeromqFixture {
            hub,
            prober,
            routers: Mutex::default(),
            silent: Mutex::default(),
        }
    }

    async fn publisher(&self, _topic: &str) -> BoxPublisher {
        let ingress = self.ingress();
        match Publisher::push(&envelope_config().connect(&ingress)).await {
            Ok(publisher) => BoxCloneService::new(publisher),
            Err(e) => panic!("zeromq: publisher to {ingress} failed: {e}"),
        }
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        let egress = endpoint(self.hub.ports.lock().unwrap().egress);
        let mut consumer = Consumer::subscribe(&envelope_config().connect(&egress), [topic])
            .await
            .unwrap_or_else(|e| panic!("zeromq: subscribing to {topic} failed: {e}"));
        self.until_probed(
            &mut consumer,
            TopicProbe(self.prober.clone(), topic.to_owned()),
        )
        .await;
        let topic = topic.to_owned();
        consumer
            .filter(move |item| {
                let keep = match item {
                    Ok(d) => !is_probe(item) && d.message().destination() == topic,
                    Err(_) => true,
                };
                std::future::ready(keep)
            })
            .boxed()
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        self.hub.group(topic, group).await;
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        let (output, live) = self.hub.group(topic, group).await;
        let address = output.endpoints()[0].clone();
        let mut consumer = Consumer::pull(&envelope_config().connect(&address))
            .await
            .unwrap_or_else(|e| panic!("zeromq: joining group {group} at {address} failed: {e}"));
        live.fetch_add(1, Ordering::SeqCst);
        let member = Member(live.clone());
        let mut probe = GroupProbe(output.clone(), topic.to_owned());
        self.until_probed(&mut consumer, GroupProbe(output.clone(), topic.to_owned()))
            .await;
        // Probe on until the PUSH has noticed every member that left.
        let settled = tokio::time::timeout(WAIT, async {
            while output.peers() != live.load(Ordering::SeqCst) {
                probe.probe(self).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "zeromq: the group PUSH counts {} members, {} are live",
            output.peers(),
            live.load(Ordering::SeqCst)
        );
        consumer
            .filter(move |item| {
                let _ = &member;
                std::future::ready(!is_probe(item))
            })
            .boxed()
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        panic!(
            "zeromq has no dead-letter destination for {topic}: Capabilities::dead_letters is off"
        )
    }

    /// A ROUTER bound on a free loopback port, and its `Replies`: ZeroMQ's native
    /// serving side; `reply_to` is not used (each request carries its route back).
    async fn request_server(&self, topic: &str, _reply_to: &str) -> (BoxConsumer, BoxPublisher) {
        let (consumer, replies) = Consumer::router(&envelope_config().bind("tcp://127.0.0.1:0"))
            .await
            .unwrap_or_else(|e| panic!("zeromq: binding a ROUTER for {topic} failed: {e}"));
        let endpoint = consumer.endpoints()[0].clone();
        self.routers
            .lock()
            .unwrap()
            .insert(topic.to_owned(), endpoint);
        (consumer.boxed(), BoxCloneService::new(replies))
    }

    /// A DEALER connected to the topic's ROUTER (one that never replies if nobody
    /// serves the topic); `reply_to` is not used.
    async fn requester(&self, topic: &str, _reply_to: &str, timeout: Duration) -> BoxRequester {
        let served = self.routers.lock().unwrap().get(topic).cloned();
        let endpoint = match served {
            Some(endpoint) => endpoint,
            None => {
                let (silent, _) = Consumer::router(&envelope_config().bind("tcp://127.0.0.1:0"))
                    .await
                    .unwrap_or_else(|e| panic!("zeromq: binding a silent ROUTER failed: {e}"));
                let endpoint = silent.endpoints()[0].clone();
                self.silent.lock().unwrap().push(silent);
                endpoint
            }
        };
        match Requester::connect(&envelope_config().connect(&endpoint)).await {
            Ok(requester) => BoxCloneService::new(requester.timeout(timeout)),
            Err(e) => panic!("zeromq: a DEALER to {endpoint} failed: {e}"),
        }
    }

    fn invalid_destinations(&self) -> Vec<String> {
        // Any non-empty UTF-8 string is a topic frame; an empty one would match every
        // subscription, so the publisher refuses it.
        vec![String::new()]
    }

    async fn stop_broker(&self) {
        self.hub.stop().await;
    }

    async fn start_broker(&self) {
        self.hub.start().await;
    }
}

conformance!(ZeromqFixture);
