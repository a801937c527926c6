//! ipstats: sliding-window visit counts per client IP from Kafka access logs,
//! served live over HTTP. The code map is in README.md ("Code map").

pub mod answers;
pub mod app;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod count;
pub mod decisions;
pub mod deliver;
pub mod durable;
pub mod http;
pub mod ingest;
pub mod input;
pub mod kafka;
pub mod log_limit;
pub mod metrics;
pub mod offsets;
pub mod owners;
pub mod query;
pub mod rules;
pub mod snapshot;
pub mod stop;
pub mod tools;
pub mod vocab;
pub mod window;
