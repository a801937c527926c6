//! Side tools around the service: the embedded demo, the traffic generator
//! and `ipstats produce` that write realistic log lines, and `ipstats count`
//! that counts a log file with the service's parser.

pub mod count_file;
pub mod demo;
pub mod produce;
pub mod traffic;
