//! Interop with zeromq's own clients.
