//! Bridge metrics. The `shard` label is bounded by the stream's shard count
//! (closed shards stop moving but keep their series until restart).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::telemetry::register;

#[derive(Clone)]
pub struct BridgeMetrics {
    pub records: IntCounterVec,
    pub bytes: IntCounterVec,
    pub behind_latest: IntGaugeVec,
    pub iterator_age: IntGaugeVec,
    pub throttles: IntCounterVec,
    pub resubscribes: IntCounterVec,
    pub iterator_refreshes: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub shards: IntGaugeVec,
    pub commits: IntCounter,
    pub aborts: IntCounter,
    /// Heartbeat rounds committed to every events partition.
    pub heartbeats: IntCounter,
    pub commit_duration: Histogram,
    /// Seconds spent awaiting Kinesis calls and subscription events, by call.
    pub kinesis_wait: prometheus::CounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

impl BridgeMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            records: counter_vec(
                registry,
                "huntflow_kinesis_records_total",
                "Kinesis records committed to Kafka, by shard.",
                &["shard"],
            ),
            bytes: counter_vec(
                registry,
                "huntflow_kinesis_bytes_total",
                "Bytes of Kinesis record data committed to Kafka, by shard.",
                &["shard"],
            ),
            behind_latest: gauge_vec(
                registry,
                "huntflow_kinesis_millis_behind_latest",
                "MillisBehindLatest of the last GetRecords response or subscription event, by shard.",
                &["shard"],
            ),
            iterator_age: gauge_vec(
                registry,
                "huntflow_kinesis_iterator_age_seconds",
                "Now minus the arrival time of the last record read, by shard (whole seconds).",
                &["shard"],
            ),
            throttles: counter_vec(
                registry,
                "huntflow_kinesis_throttles_total",
                "Kinesis calls refused for throughput or rate limits, by shard.",
                &["shard"],
            ),
            resubscribes: counter_vec(
                registry,
                "huntflow_kinesis_resubscribes_total",
                "Enhanced fan-out resubscriptions, by shard and reason (ended, silence, stalled, error).",
                &["shard", "reason"],
            ),
            iterator_refreshes: counter_vec(
                registry,
                "huntflow_kinesis_iterator_refreshes_total",
                "Shard iterators obtained again after expiry or an error, by shard.",
                &["shard"],
            ),
            dead_letters: counter_vec(
                registry,
                "huntflow_dead_letter_records_total",
                "Records written to the dead-letter topic, by stage and reason code.",
                &["stage", "reason"],
            ),
            shards: gauge_vec(
                registry,
                "huntflow_kinesis_shards",
                "Shards this instance owns, by state (reading, waiting_for_parents, finished).",
                &["state"],
            ),
            commits: register(
                registry,
                IntCounter::new("huntflow_kinesis_commits_total", "Bridge transactions committed.")
                    .expect("valid metric"),
            ),
            heartbeats: register(
                registry,
                IntCounter::new(
                    "huntflow_kinesis_heartbeats_total",
                    "Heartbeat rounds committed to every events partition (the minimum clock of the owned shards).",
                )
                .expect("valid metric"),
            ),
            aborts: register(
                registry,
                IntCounter::new(
                    "huntflow_kinesis_aborts_total",
                    "Bridge transactions aborted; reading restarts from the last commit.",
                )
                .expect("valid metric"),
            ),
            commit_duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "huntflow_kinesis_commit_duration_seconds",
                        "Time to produce one batch and commit its transaction.",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )
                .expect("valid metric"),
            ),
            kinesis_wait: register(
                registry,
                prometheus::CounterVec::new(
                    Opts::new("huntflow_kinesis_wait_seconds_total", "Time spent awaiting Kinesis, by call."),
                    &["call"],
                )
                .expect("valid metric"),
            ),
        }
    }
}
