//! Interop with nats's own clients.
