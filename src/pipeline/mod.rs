//! The service's data path, in the order a record travels it:
//!
//! ```text
//! ingest (consumer thread) ──► counter (counting thread: parse + count) ──► pane
//!    │   decisions by ingest::tracker (pure)                                 │
//!    │                                      window: ring of panes + totals ◄─┘
//!    └──► every slide: snapshot::build ──► Published (Arc swap) ──► HTTP
//!    └──► every checkpoint interval: CheckpointJob ──► checkpoint writer
//! ```
//!
//! - [`parse`]: log line → client IP (fast path, held to [`reference`](mod@reference), the
//!   serde_json definition); [`json`] is its JSON scanner, [`clf`] its CLF
//!   reader, [`field`] where the client is (format, path, X-Forwarded-For),
//!   [`time`] the logged time, [`hint`] the misconfigurations skipped lines
//!   point to.
//! - [`counts`]: per-IP counters (open: hash table; closed: sorted arrays).
//! - [`counter`]: [`counter::Tally`] (parse + count) and the counting thread;
//!   [`event`] its tally by event time (a pane per batch of log time).
//! - [`window`]: panes, running totals, top-N — pure, time passed in.
//! - [`snapshot`]: the immutable published view, and how it is built.
//! - [`query`]: questions at query time (any kept range, networks).
//! - [`rules`]: rules, their evaluation at each slide, the queues to the
//!   alert receivers.
//! - [`ingest`]: the consumer loop; [`ingest::tracker`] decides, the loop calls librdkafka.

pub mod clf;
pub mod counter;
pub mod counts;
pub mod event;
pub mod field;
pub mod hint;
pub mod ingest;
pub mod json;
pub mod parse;
pub mod query;
pub mod reference;
pub mod rules;
pub mod snapshot;
pub mod time;
pub mod window;
