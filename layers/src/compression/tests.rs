use tokio_test::assert_ready_ok;
use tower::{Layer, ServiceExt};
use tower_mq_core::{BoxError, Delivery, ErrorKind, Message, Receipt};
use tower_mq_core::{Guarantee, Position};
use tower_test::mock;

use super::error::{CorruptPayload, TooLarge, UnknownEncoding};
use super::{CompressLayer, DecompressLayer, Encoding};
use crate::classify::{Classifier, DefaultClassifier};

const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Zstd, Encoding::Lz4];

fn sample() -> Vec<u8> {
    (0..20_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

/// `copies` compressed copies of 1 MiB of zeros, concatenated: a valid stream of
/// `copies` MiB for each encoding (gzip members, zstd frames, lz4 frames).
pub(super) fn zeros_stream(encoding: Encoding, copies: usize) -> Vec<u8> {
    let one = encoding
        .compress(&vec![0u8; 1 << 20])
        .expect("compress 1 MiB");
    one.repeat(copies)
}

#[tokio::test(start_paused = true)]
async fn round_trips_every_encoding_through_both_layers() {
    for encoding in ALL {
        let (publisher, mut publisher_handle) = mock::pair::<Message, Receipt>();
        publisher_handle.allow(1);
        let mut publisher = mock::Spawn::new(CompressLayer::new(encoding).layer(publisher));
        assert_ready_ok!(publisher.poll_ready());
        let fut = publisher.call(Message::new("t", sample()).with_header("h", "v"));
        let (sent, reply) = publisher_handle.next_request().await.expect("published");
        reply.send_response(
            Receipt::new("memory", "t", Guarantee::Stored).with_position(Position::Sequence(1)),
        );
        fut.await.expect("publish ok");
        assert_eq!(sent.content_encoding(), Some(encoding.as_str()));
        assert!(sent.payload().len() < sample().len(), "{encoding} shrinks");
        assert_eq!(sent.headers().get_str("h"), Some("v"));

        let (handler, mut handler_handle) = mock::pair::<Delivery, ()>();
        handler_handle.allow(1);
        let handler = DecompressLayer::new().layer(handler);
        let done = tokio::spawn(handler.oneshot(Delivery::unacknowledged(sent)));
        let (delivery, reply) = handler_handle.next_request().await.expect("handled");
        assert_eq!(&delivery.message().payload()[..], &sample()[..]);
        assert_eq!(delivery.message().content_encoding(), None);
        reply.send_response(());
        done.await.expect("join").expect("handled ok");
    }
}

#[tokio::test(start_paused = true)]
async fn small_and_already_encoded_payloads_pass_through() {
    let (publisher, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(2);
    let mut publisher = mock::Spawn::new(
        CompressLayer::new(Encoding::Gzip)
            .min_size(100)
            .layer(publisher),
    );
    assert_ready_ok!(publisher.poll_ready());
    drop(publisher.call(Message::new("t", vec![1u8; 99])));
    let (small, _) = handle.next_request().await.expect("published");
    assert_eq!(small.content_encoding(), None);
    assert_eq!(small.payload().len(), 99);
    assert_ready_ok!(publisher.poll_ready());
    drop(publisher.call(Message::new("t", vec![1u8; 500]).with_content_encoding("br")));
    let (encoded, _) = handle.next_request().await.expect("published");
    assert_eq!(encoded.content_encoding(), Some("br"));
    assert_eq!(encoded.payload().len(), 500);
}

#[tokio::test(start_paused = true)]
async fn payloads_that_do_not_shrink_are_sent_as_is() {
    // xorshift noise: no encoding can shrink it.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for encoding in ALL {
        let (publisher, mut handle) = mock::pair::<Message, Receipt>();
        handle.allow(1);
        let mut publisher = mock::Spawn::new(CompressLayer::new(encoding).layer(publisher));
        assert_ready_ok!(publisher.poll_ready());
        drop(publisher.call(Message::new("t", noise.clone())));
        let (sent, _) = handle.next_request().await.expect("published");
        assert_eq!(sent.content_encoding(), None, "{encoding}");
        assert_eq!(&sent.payload()[..], &noise[..]);
    }
}

async fn decompress_err(msg: Message, limit: usize) -> BoxError {
    let (handler, mut handle) = mock::pair::<Delivery, ()>();
    handle.allow(1);
    let err = DecompressLayer::new()
        .max_size(limit)
        .layer(handler)
        .oneshot(Delivery::unacknowledged(msg))
        .await
        .expect_err("must fail");
    assert!(
        handle.next_request().await.is_none(),
        "the handler must not run"
    );
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Permanent
    );
    err
}

#[tokio::test(start_paused = true)]
async fn unknown_encoding_is_permanent() {
    let err = decompress_err(Message::new("t", "x").with_content_encoding("snappy"), 1024).await;
    let unknown = err
        .downcast_ref::<UnknownEncoding>()
        .expect("UnknownEncoding");
    assert_eq!(unknown.encoding(), "snappy");
    assert!(err.to_string().contains("`t`"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn corrupt_payload_is_permanent() {
    for encoding in ALL {
        let msg =
            Message::new("t", "definitely not compressed").with_content_encoding(encoding.as_str());
        let err = decompress_err(msg, 1024).await;
        assert!(err.is::<CorruptPayload>(), "{encoding}: {err}");
    }
}

#[test]
fn concatenated_streams_decode_whole() {
    for encoding in ALL {
        let out = encoding
            .decompress(&zeros_stream(encoding, 3), 4 << 20)
            .expect("valid stream");
        assert_eq!(out.len(), 3 << 20, "{encoding}");
        assert!(out.iter().all(|b| *b == 0));
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_gib_bomb_fails_at_the_limit() {
    const LIMIT: usize = 16 << 20;
    for encoding in ALL {
        let bomb = zeros_stream(encoding, 1024);
        assert!(
            bomb.len() < 8 << 20,
            "{encoding} bomb is small: {}",
            bomb.len()
        );
        let msg = Message::new("t", bomb).with_content_encoding(encoding.as_str());
        let err = decompress_err(msg, LIMIT).await;
        let too_large = err.downcast_ref::<TooLarge>().expect("TooLarge");
        assert_eq!(too_large.limit(), LIMIT);
    }
}

#[test]
fn output_exactly_at_the_limit_is_accepted() {
    let data = vec![7u8; 300_000];
    for encoding in ALL {
        let packed = encoding.compress(&data).expect("compress");
        assert_eq!(
            encoding.decompress(&packed, 300_000).expect("fits").len(),
            300_000
        );
        let err = encoding
            .decompress(&packed, 299_999)
            .expect_err("one byte over");
        assert!(
            err.get_ref().is_some_and(|e| e.is::<TooLarge>()),
            "{encoding}: {err}"
        );
    }
}

#[test]
fn encoding_tokens_parse() {
    assert_eq!("GZIP".parse::<Encoding>().ok(), Some(Encoding::Gzip));
    assert_eq!(" zstd".parse::<Encoding>().ok(), Some(Encoding::Zstd));
    assert_eq!("lz4".parse::<Encoding>().ok(), Some(Encoding::Lz4));
    assert!("deflate".parse::<Encoding>().is_err());
}
