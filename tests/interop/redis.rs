//! Interop with redis's own clients.
