//! Compressing payloads on publish and decompressing them on handle: gzip, zstd, lz4.
//!
//! [`Compress`] wraps a publisher: it compresses each message's payload with the
//! configured [`Encoding`] (optionally only payloads of at least
//! [`CompressLayer::min_size`] bytes) and records the encoding in the message's
//! content-encoding property, which every broker carries. A message that already has
//! a content encoding is passed through untouched, and so is a payload that does not
//! shrink.
//!
//! [`Decompress`] wraps a handler: it reads each delivery's content encoding and
//! restores the payload before the handler runs, clearing the property. Decompression
//! is bounded: the output may not exceed [`DecompressLayer::max_size`] (16 MiB by
//! default). The decoder is read as a stream into a buffer that never grows past the
//! limit, so a decompression bomb fails fast with [`error::TooLarge`] instead of
//! exhausting memory. Too large, corrupt, and unknown encodings are all permanent
//! errors: the delivery goes to the dead-letter destination rather than being retried.
//!
//! Encodings: `gzip` (RFC 1952, several members allowed), `zstd` (several frames
//! allowed) and `lz4` (the LZ4 frame format). `identity` or no encoding means none.
//! Compression runs on the calling task; for large payloads put the work where it can
//! block, or keep payloads small.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Delivery, Message, Receipt};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::compression::{CompressLayer, DecompressLayer, Encoding};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let publisher = service_fn(move |msg: Message| {
//!     let tx = tx.clone();
//!     async move {
//!         tx.send(msg)?;
//!         Ok::<_, BoxError>(Receipt::new("memory", "logs", Guarantee::Stored).with_position(Position::Sequence(1)))
//!     }
//! });
//! let publisher = CompressLayer::new(Encoding::Zstd).min_size(64).layer(publisher);
//! publisher.oneshot(Message::new("logs", vec![b'a'; 4096])).await?;
//! let sent = rx.recv().await.expect("published");
//! assert_eq!(sent.content_encoding(), Some("zstd"));
//! assert!(sent.payload().len() < 4096);
//!
//! let handler = service_fn(|delivery: Delivery| async move {
//!     assert_eq!(delivery.message().payload().len(), 4096);
//!     assert_eq!(delivery.message().content_encoding(), None);
//!     Ok::<_, BoxError>(())
//! });
//! let handler = DecompressLayer::new().max_size(1 << 20).layer(handler);
//! handler.oneshot(Delivery::unacknowledged(sent)).await?;
//! # Ok(()) }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::fmt;
#[cfg(any(feature = "gzip", feature = "lz4"))]
use std::io::Write;
use std::io::{self, Read};
use std::str::FromStr;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower_mq_core::{BoxError, Delivery, Message};
use tower_service::Service;

use self::error::{CompressError, CorruptPayload, TooLarge, UnknownEncoding};
use self::future::ResponseFuture;
pub use self::layer::{CompressLayer, DecompressLayer};

/// A content encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// gzip (DEFLATE), `flate2` (feature `gzip`).
    #[cfg(feature = "gzip")]
    Gzip,
    /// Zstandard (feature `zstd`).
    #[cfg(feature = "zstd")]
    Zstd,
    /// LZ4 frame format, `lz4_flex`, pure Rust (feature `lz4`).
    #[cfg(feature = "lz4")]
    Lz4,
}

impl Encoding {
    /// The content-encoding token: `gzip`, `zstd` or `lz4`.
    pub fn as_str(self) -> &'static str {
        match self {
            #[cfg(feature = "gzip")]
            Encoding::Gzip => "gzip",
            #[cfg(feature = "zstd")]
            Encoding::Zstd => "zstd",
            #[cfg(feature = "lz4")]
            Encoding::Lz4 => "lz4",
        }
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            #[cfg(feature = "gzip")]
            Encoding::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::default(),
                );
                enc.write_all(data)?;
                enc.finish()
            }
            #[cfg(feature = "zstd")]
            Encoding::Zstd => zstd::stream::encode_all(data, 0),
            #[cfg(feature = "lz4")]
            Encoding::Lz4 => {
                let mut enc =
                    lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
                enc.write_all(data)?;
                enc.finish().map_err(io::Error::other)
            }
        }
    }

    /// Decompresses `data`, failing with [`error::TooLarge`] (inside the `io::Error`)
    /// as soon as the output would exceed `limit` bytes. The output buffer never grows
    /// past `limit`; besides it, the decoders keep bounded buffers of their own: gzip
    /// a few KiB, lz4 its block buffers (at most 8 MiB), zstd a window of at most the
    /// larger of 8 MiB and `limit` (frames asking for more are refused).
    pub fn decompress(self, data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
        match self {
            #[cfg(feature = "gzip")]
            Encoding::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(data), limit),
            #[cfg(feature = "zstd")]
            Encoding::Zstd => {
                let mut dec = zstd::stream::read::Decoder::new(data)?;
                // The window is memory the decoder allocates up front, sized by the
                // frame header; refuse windows larger than the output may be.
                dec.window_log_max(window_log_for(limit))?;
                read_bounded(dec, limit)
            }
            #[cfg(feature = "lz4")]
            Encoding::Lz4 => {
                // The frame decoder stops after one frame; a stream may hold several.
                let mut rest = data;
                let mut out = Vec::new();
                while !rest.is_empty() {
                    let before = rest.len();
                    read_bounded_into(
                        lz4_flex::frame::FrameDecoder::new(&mut rest),
                        &mut out,
                        limit,
                    )?;
                    if rest.len() == before {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "lz4 frame decoder made no progress",
                        ));
                    }
                }
                Ok(out)
            }
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Encoding {
    type Err = UnknownEncoding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            #[cfg(feature = "gzip")]
            e if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
                Ok(Encoding::Gzip)
            }
            #[cfg(feature = "zstd")]
            e if e.eq_ignore_ascii_case("zstd") => Ok(Encoding::Zstd),
            #[cfg(feature = "lz4")]
            e if e.eq_ignore_ascii_case("lz4") => Ok(Encoding::Lz4),
            other => Err(UnknownEncoding::new(other)),
        }
    }
}

#[cfg(feature = "zstd")]
fn window_log_for(limit: usize) -> u32 {
    // Streaming encoders write the window of their level (up to 8 MiB through level
    // 19) whatever the payload's size, so allow that much; beyond it, no more than
    // the output may hold, and never past zstd's own default ceiling (128 MiB).
    let needed = usize::BITS - limit.saturating_sub(1).leading_zeros();
    needed.clamp(23, 27)
}

/// Reads `reader` to its end into a buffer that never grows past `limit` bytes.
#[cfg(any(feature = "gzip", feature = "zstd"))]
fn read_bounded(reader: impl Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    read_bounded_into(reader, &mut out, limit)?;
    Ok(out)
}

/// Appends `reader`'s output to `out`, which never grows past `limit` bytes.
fn read_bounded_into(mut reader: impl Read, out: &mut Vec<u8>, limit: usize) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let needed = out.len() + n;
        if needed > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                TooLarge::new(limit),
            ));
        }
        if needed > out.capacity() {
            // Double as Vec would, but never past the limit.
            let target = (out.capacity() * 2).max(needed).max(CHUNK).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Compresses published payloads. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Compress<S> {
    inner: S,
    encoding: Encoding,
    min_size: usize,
}

impl<S> Compress<S> {
    /// Compresses every payload of at least `min_size` bytes with `encoding`.
    pub fn new(inner: S, encoding: Encoding, min_size: usize) -> Self {
        Compress {
            inner,
            encoding,
            min_size,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Message> for Compress<S>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut msg: Message) -> Self::Future {
        let skip = msg.content_encoding().is_some() || msg.payload().len() < self.min_size;
        if !skip {
            match self.encoding.compress(msg.payload()) {
                // Incompressible data (already compressed, encrypted) is sent as is.
                Ok(compressed) if compressed.len() < msg.payload().len() => {
                    msg.set_payload(Bytes::from(compressed));
                    msg.set_content_encoding(Some(self.encoding.as_str().to_owned()));
                }
                Ok(_) => {}
                Err(source) => {
                    return ResponseFuture::failed(
                        CompressError::new(self.encoding, msg.destination(), source).into(),
                    )
                }
            }
        }
        ResponseFuture::called(self.inner.call(msg))
    }
}

/// Decompresses delivered payloads, within a size limit. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Decompress<S> {
    inner: S,
    max_size: usize,
}

impl<S> Decompress<S> {
    /// Decompresses payloads of up to `max_size` bytes once decompressed.
    pub fn new(inner: S, max_size: usize) -> Self {
        Decompress { inner, max_size }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn decompress_message(msg: &mut Message, max_size: usize) -> Result<(), BoxError> {
    let Some(token) = msg.content_encoding() else {
        return Ok(());
    };
    if token.trim().is_empty() || token.trim().eq_ignore_ascii_case("identity") {
        msg.set_content_encoding(None);
        return Ok(());
    }
    let encoding: Encoding = token
        .parse()
        .map_err(|e: UnknownEncoding| e.with_destination(msg.destination()))?;
    match encoding.decompress(msg.payload(), max_size) {
        Ok(plain) => {
            msg.set_payload(Bytes::from(plain));
            msg.set_content_encoding(None);
            Ok(())
        }
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) => {
            Err(TooLarge::new(max_size)
                .with_destination(msg.destination())
                .into())
        }
        Err(e) => Err(CorruptPayload::new(encoding, msg.destination(), e.into()).into()),
    }
}

impl<S> Service<Delivery> for Decompress<S>
where
    S: Service<Delivery>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut delivery: Delivery) -> Self::Future {
        match decompress_message(delivery.message_mut(), self.max_size) {
            Ok(()) => ResponseFuture::called(self.inner.call(delivery)),
            Err(e) => ResponseFuture::failed(e),
        }
    }
}

#[cfg(all(test, feature = "gzip", feature = "zstd", feature = "lz4"))]
mod tests;
