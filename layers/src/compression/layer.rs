use tower_layer::Layer;

use super::{Compress, Decompress, Encoding};

/// Builds [`Compress`]. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct CompressLayer {
    encoding: Encoding,
    min_size: usize,
}

impl CompressLayer {
    /// Compresses every payload with `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        CompressLayer {
            encoding,
            min_size: 0,
        }
    }

    /// Compresses only payloads of at least `bytes` bytes (small payloads rarely
    /// shrink enough to pay for the work). Default 0: all payloads.
    pub fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }
}

impl<S> Layer<S> for CompressLayer {
    type Service = Compress<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Compress::new(inner, self.encoding, self.min_size)
    }
}

/// Builds [`Decompress`]. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct DecompressLayer {
    max_size: usize,
}

impl Default for DecompressLayer {
    fn default() -> Self {
        DecompressLayer::new()
    }
}

impl DecompressLayer {
    /// The default limit on a decompressed payload: 16 MiB.
    pub const DEFAULT_MAX_SIZE: usize = 16 * 1024 * 1024;

    /// Decompresses payloads of up to [`Self::DEFAULT_MAX_SIZE`].
    pub fn new() -> Self {
        DecompressLayer {
            max_size: Self::DEFAULT_MAX_SIZE,
        }
    }

    /// Sets the largest decompressed payload accepted, in bytes.
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }
}

impl<S> Layer<S> for DecompressLayer {
    type Service = Decompress<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Decompress::new(inner, self.max_size)
    }
}
