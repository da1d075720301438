//! Request/reply and fan-out cases, over the broker's `Requester` and a `FanOut` of its
//! publishers. Add each case here and list it in the `conformance!` macro in main.rs
//! under `// cases/patterns.rs`.
