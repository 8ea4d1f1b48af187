//! huntflow: exactly-once stream processing for live treasure hunts.
//!
//! Data flows one way: source (`ingest`, `simulate`) -> `kafka` -> stages ->
//! sinks. The binary in `main.rs` only parses the command line.

pub mod bench;
pub mod claim;
pub mod config;
pub mod event;
pub mod ingest;
pub mod kafka;
pub mod kinesis;
pub mod pipeline;
pub mod query;
pub mod rank;
pub mod ranking;
pub mod run;
pub mod score;
pub mod signals;
pub mod simulate;
pub mod stage;
pub mod state;
pub mod telemetry;
pub mod topology;
pub mod verify;
pub mod windowing;
