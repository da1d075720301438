//! Redis Streams: `XADD` publishers and a consumer-group consumer.
//!
//! [`Publisher`] appends one message per call; [`BatchPublisher`] pipelines a batch.
//! [`Consumer`] reads in a consumer group with these semantics:
//!
//! - **ack**: `XACK`.
//! - **nack**: per [`NackMode`]: leave the entry pending to be reclaimed after its delay
//!   (the default), or re-add a copy at the end of the stream.
//! - **reject**: move the message to the dead-letter stream (default `<stream>.dlq`,
//!   [`ConsumerConfig::dead_letter`] to name another) with the shared
//!   [dead-letter headers](crate::dead_letter): reason, original destination (the
//!   stream), consumer (the group), entry id, deliveries and time; and acknowledge it,
//!   in one `MULTI`/`EXEC`.
//! - **recovery**: entries pending longer than the claim idle time (their consumer
//!   died, or they were nacked) are taken over with `XAUTOCLAIM`; their delivery count
//!   comes from the pending entries list, and past the consumer's backstop
//!   ([`ConsumerConfig::max_deliveries`], above `serve`'s limit, which owns the
//!   attempt limit) they are dead-lettered with reason `max deliveries exceeded`.
//! - **TTL**: an entry read after its deadline is dead-lettered with reason `expired`.
//! - **malformed entries**: an entry that cannot be delivered intact (no payload field,
//!   a field name that is not UTF-8 or holds a control character) is dead-lettered
//!   with reason `malformed entry: <why>`; the entries read with it are delivered.
//! - **delivery counts**: the server's counter (`XPENDING`) plus the `tmq-redeliveries`
//!   of a copy re-added by a nack ([`NackMode::Readd`]). A consumer never writes a
//!   count at or above its backstop (a nack there dead-letters instead), so a larger
//!   one, from another program, is ignored: no entry is dead-lettered on its first
//!   read for a count it merely claims.
//! - **closing**: a consumer dropped or [closed](Consumer::close) hands back the entries
//!   it read ahead (a batch, plus the next read sent while the batch is handed out)
//!   and never yielded: one script sets them idle for the claim idle time, so the
//!   next `XAUTOCLAIM` scan of another consumer takes them at once, and sets their
//!   delivery counters back by the read that did not hand them out, so they come again
//!   with the count they were read with (1 for a first read), not as redeliveries
//!   (`XCLAIM ... IDLE ... RETRYCOUNT ... JUSTID`). A read in flight is seen through
//!   first. Then, in the same script, a consumer with nothing pending deletes its name
//!   from the group (`XGROUP DELCONSUMER`), so groups do not collect the names of
//!   consumers long gone; one that still holds pending entries (handed back, or yielded
//!   and not settled) keeps its name, and the entries stay for `XAUTOCLAIM`. Dropped,
//!   the consumer does this in the background: [`Consumer::released`] tells when it is
//!   over.
//! - **names left behind**: after each `XAUTOCLAIM` scan, a consumer deletes from the
//!   group every other name with nothing pending that has been idle (`XINFO
//!   CONSUMERS`) for longer than its claim idle time, checked and deleted in one
//!   script: the names of consumers that closed holding entries (once those are
//!   claimed) or that died. No pending entry goes with a name; a live consumer whose
//!   name goes holds nothing, and Redis creates the name again when it next reads or
//!   claims an entry.
//!
//! See the [parent module](crate::redis) for the entry layout and an example.

mod acks;
mod consumer;
mod publisher;

pub use consumer::{Consumer, ConsumerConfig, NackMode, DEFAULT_MAX_DELIVERIES};
pub use publisher::{BatchPublisher, Publisher};
