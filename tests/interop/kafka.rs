//! Interop with kafka's own clients.
