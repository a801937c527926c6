//! ipstats: sliding-window visit counts per client IP from Kafka access logs,
//! served live over HTTP.

pub mod app;
pub mod checkpoint;
pub mod config;
pub mod count;
pub mod counter;
pub mod demo;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod offsets;
pub mod parse;
pub mod produce;
pub mod snapshot;
pub mod stop;
pub mod traffic;
pub mod window;
