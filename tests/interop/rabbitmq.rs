//! Interop with rabbitmq's own clients.
