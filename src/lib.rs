//! huntflow: exactly-once stream processing for live treasure hunts.
//!
//! Data flows one way: source (`ingest`, `simulate`) -> `kafka` -> stages ->
//! sinks. The binary in `main.rs` only parses the command line.

pub mod topology;
pub mod event;
pub mod config;
pub mod kafka;
pub mod ingest;
pub mod telemetry;
pub mod simulate;
pub mod run;
pub mod signals;
pub mod bench;
pub mod state;
pub mod stage;
pub mod claim;
pub mod ranking;
pub mod windowing;
