//! A real decompression bomb (1 GiB of zeros) against a 16 MiB limit: the decompress
//! layer must refuse it without allocating anywhere near what it would expand to.
//!
//! A counting global allocator measures the peak heap use while the layer works, so
//! this test lives alone in its own binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{service_fn, Layer, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Message};
use tower_mq_layers::compression::error::TooLarge;
use tower_mq_layers::compression::{DecompressLayer, Encoding};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    // Delegated rather than left to the default (alloc, copy, free), so that growing a
    // large buffer is counted as the system allocator really does it (in place when
    // it can).
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1 << 20;
const LIMIT: usize = 16 * MIB;

/// 1 GiB of zeros: 1024 concatenated copies of 1 MiB compressed (gzip members, zstd
/// frames, lz4 frames are all valid concatenated).
fn bomb(encoding: Encoding) -> Vec<u8> {
    let one = encoding.compress(&vec![0u8; MIB]).expect("compress 1 MiB");
    one.repeat(1024)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_gib_bomb_is_refused_within_the_limit() {
    for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Lz4] {
        let payload = bomb(encoding);
        let compressed = payload.len();
        let msg = Message::new("uploads", payload).with_content_encoding(encoding.as_str());
        let handler = service_fn(|_: Delivery| async { Ok::<_, BoxError>(()) });
        let layer = DecompressLayer::new().max_size(LIMIT);

        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let err = layer
            .layer(handler)
            .oneshot(Delivery::unacknowledged(msg))
            .await
            .expect_err("the bomb must be refused");
        let peak = PEAK.load(Ordering::Relaxed) - base;

        let too_large = err.downcast_ref::<TooLarge>().expect("TooLarge");
        assert_eq!(too_large.limit(), LIMIT);
        // The output buffer stops at the limit; zstd adds its window (here 16 MiB),
        // lz4 its block buffers (at most 2 x 4 MiB).
        let allowed = match encoding {
            Encoding::Zstd => 2 * LIMIT + 2 * MIB,
            Encoding::Lz4 => LIMIT + 10 * MIB,
            _ => LIMIT + 2 * MIB,
        };
        assert!(
            peak <= allowed,
            "{encoding}: peak {peak} bytes for a {compressed}-byte bomb, allowed {allowed}"
        );
    }
}
