//! Interoperability with each broker's ordinary clients: the broker's own client, used
//! directly, on one side of the wire and tower-mq on the other, in both directions, and
//! a consume-and-republish through tower-mq that leaves the message as the plain client
//! sees it.
//!
//! Test names are `<broker>::<case>`, so `scripts/test --test interop -- kafka::` runs
//! one broker. Every test needs its broker and fails (never skips) without it.

#[path = "../support/harness.rs"]
mod harness;
#[path = "../support/waits.rs"]
mod waits;
#[cfg(feature = "zeromq")]
#[path = "../support/zeromq_peers.rs"]
mod zeromq_peers;

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "zeromq")]
mod zeromq;
