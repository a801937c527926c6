//! Reading a line: log line → client IP (and its time, under event time).
//!
//! - [`parse`]: the fast path ([`parse::Parser`]), held to [`reference`], the
//!   serde_json definition of the same answer.
//! - [`json`]: the byte-level JSON scanner, after [`classify`]'s first pass
//!   marking the bytes that end string contents; [`clf`]: the NCSA common/combined
//!   log format reader.
//! - [`field`]: where the client is (format, dotted path, X-Forwarded-For).
//! - [`time`]: the logged time of a line.
//! - [`hint`]: the misconfigurations skipped lines point to.

mod classify;
pub mod clf;
pub mod field;
pub mod hint;
pub mod json;
pub mod parse;
pub mod reference;
pub mod time;
