use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio_test::assert_ready_ok;
use tower::{service_fn, Layer, ServiceExt};
use tower_mq_core::{BoxError, Delivery, ErrorKind, Message, Settlement};
use tower_test::mock;

use super::error::StoreError;
use super::{DedupLayer, DedupStore, MemoryStore};
use crate::classify::{Classifier, DefaultClassifier};
use crate::metrics::names;
use crate::test_metrics::Recorded;

fn with_id(id: &str) -> Delivery {
    Delivery::unacknowledged(Message::new("orders", "x").with_message_id(id))
}

/// A handler that counts its calls and fails while `fail` is set.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicUsize>,
}

impl Counting {
    fn service(
        &self,
    ) -> impl tower::Service<Delivery, Response = (), Error = BoxError, Future = impl Send> + Clone
    {
        let calls = self.calls.clone();
        let fail = self.fail.clone();
        service_fn(move |_: Delivery| {
            calls.fetch_add(1, Ordering::SeqCst);
            let failing = fail.load(Ordering::SeqCst) > 0;
            async move {
                if failing {
                    Err::<(), BoxError>("handler failed".into())
                } else {
                    Ok(())
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_is_acked_and_skipped() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let handler = Counting::default();
    let svc =
        DedupLayer::new(MemoryStore::new(100, Duration::from_secs(60))).layer(handler.service());

    let first = with_id("a");
    svc.clone().oneshot(first.clone()).await.expect("handled");
    assert_eq!(handler.calls(), 1);
    assert_eq!(
        first.settlement(),
        None,
        "settling a success is the consumer's job"
    );

    let dup = with_id("a");
    svc.clone().oneshot(dup.clone()).await.expect("skipped");
    assert_eq!(handler.calls(), 1, "the handler did not run again");
    assert_eq!(dup.settlement(), Some(Settlement::Acked));
    assert_eq!(
        m.counter(names::DUPLICATES_TOTAL, &[("destination", "orders")]),
        1
    );

    svc.oneshot(with_id("b")).await.expect("handled");
    assert_eq!(handler.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn messages_without_an_id_pass_through() {
    let handler = Counting::default();
    let store = MemoryStore::new(100, Duration::from_secs(60));
    let svc = DedupLayer::new(store.clone()).layer(handler.service());
    for _ in 0..2 {
        let d = Delivery::unacknowledged(Message::new("orders", "x"));
        svc.clone().oneshot(d).await.expect("handled");
    }
    assert_eq!(handler.calls(), 2);
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_handling_does_not_mark_the_id() {
    let handler = Counting::default();
    let store = MemoryStore::new(100, Duration::from_secs(60));
    let svc = DedupLayer::new(store.clone()).layer(handler.service());
    handler.fail.store(1, Ordering::SeqCst);
    svc.clone()
        .oneshot(with_id("a"))
        .await
        .expect_err("handler failed");
    assert!(!store.is_handled("a"));
    assert!(!store.is_pending("a"), "the claim was released");
    handler.fail.store(0, Ordering::SeqCst);
    let redelivery = with_id("a").with_delivery_count(2);
    svc.oneshot(redelivery.clone()).await.expect("handled");
    assert_eq!(handler.calls(), 2, "the redelivery was handled");
    assert_eq!(redelivery.settlement(), None);
    assert!(store.is_handled("a"));
}

#[tokio::test(start_paused = true)]
async fn ids_expire_after_the_ttl() {
    let store = MemoryStore::new(100, Duration::from_secs(60));
    assert!(store.claim_now("a"));
    store.complete_now("a");
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(store.is_handled("a"));
    assert!(!store.claim_now("a"));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!store.is_handled("a"));
    assert!(store.is_empty());
    assert!(store.claim_now("a"), "expired ids can be claimed again");
}

#[tokio::test(start_paused = true)]
async fn an_endless_ttl_does_not_overflow() {
    let store = MemoryStore::new(10, Duration::MAX);
    store.complete_now("a");
    tokio::time::advance(Duration::from_secs(3600 * 24 * 365)).await;
    assert!(store.is_handled("a"));
}

#[tokio::test(start_paused = true)]
async fn the_oldest_ids_go_first_at_capacity() {
    let store = MemoryStore::new(2, Duration::from_secs(60));
    store.complete_now("a");
    store.complete_now("b");
    // Re-recording `a` makes it the newest.
    store.complete_now("a");
    store.complete_now("c");
    assert!(store.is_handled("a"));
    assert!(!store.is_handled("b"));
    assert!(store.is_handled("c"));
    assert_eq!(store.len(), 2);
}

struct Broken;
impl DedupStore for Broken {
    fn claim(&self, _: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn complete(&self, _: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn release(&self, _: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_answer_fails_the_delivery_transiently() {
    let handler = Counting::default();
    let svc = DedupLayer::new(Arc::new(Broken)).layer(handler.service());
    let d = with_id("a");
    let err = svc.oneshot(d.clone()).await.expect_err("store down");
    assert_eq!(
        err.downcast_ref::<StoreError>().map(StoreError::message_id),
        Some("a")
    );
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
    assert_eq!(handler.calls(), 0);
    assert_eq!(d.settlement(), None);
}

#[tokio::test(start_paused = true)]
async fn readiness_reserved_in_poll_ready_is_used_by_the_call() {
    let (inner, mut handle) = mock::pair::<Delivery, ()>();
    let store = MemoryStore::new(10, Duration::from_secs(60));
    let mut svc = mock::Spawn::new(DedupLayer::new(store.clone()).layer(inner));
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let call = tokio::spawn(svc.call(with_id("a")));
    let (_, reply) = handle
        .next_request()
        .await
        .expect("handled by the ready service");
    reply.send_response(());
    call.await.expect("join").expect("ok");
    assert!(store.is_handled("a"));
}

#[tokio::test(start_paused = true)]
async fn a_copy_arriving_during_handling_is_a_duplicate() {
    let (inner, mut handle) = mock::pair::<Delivery, ()>();
    handle.allow(2);
    let store = MemoryStore::new(10, Duration::from_secs(60));
    let svc = DedupLayer::new(store.clone()).layer(inner);
    let first = tokio::spawn(svc.clone().oneshot(with_id("a")));
    let (_, reply) = handle.next_request().await.expect("first is being handled");
    assert!(store.is_pending("a"));

    let copy = with_id("a");
    svc.clone()
        .oneshot(copy.clone())
        .await
        .expect("skipped while the first runs");
    assert_eq!(copy.settlement(), Some(Settlement::Acked));

    reply.send_response(());
    first.await.expect("join").expect("ok");
    assert!(store.is_handled("a"));
    drop(svc);
    assert!(handle.next_request().await.is_none(), "the copy never ran");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_handling_releases_its_claim() {
    let (inner, mut handle) = mock::pair::<Delivery, ()>();
    handle.allow(2);
    let store = MemoryStore::new(10, Duration::from_secs(60));
    let svc = DedupLayer::new(store.clone()).layer(inner);
    let first = tokio::spawn(svc.clone().oneshot(with_id("a")));
    let (_, _reply) = handle.next_request().await.expect("being handled");
    assert!(store.is_pending("a"));
    first.abort();
    let _ = first.await;
    assert!(!store.is_pending("a"), "released on drop");

    let redelivery = tokio::spawn(svc.oneshot(with_id("a").with_delivery_count(2)));
    let (_, reply) = handle
        .next_request()
        .await
        .expect("the redelivery is handled");
    reply.send_response(());
    redelivery.await.expect("join").expect("ok");
}
