//! Metrics of the stage runtime, shared by every worker of a process and
//! labelled by stage (and input partition for lag: bounded by the topic).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::telemetry::register;

/// Steps of one commit, the `step` label of the commit histogram.
pub const STEP_TOTAL: &str = "total";
pub const STEP_BEFORE_COMMIT: &str = "before_commit";
pub const STEP_FLUSH_OUTPUTS: &str = "flush_outputs";
pub const STEP_CHANGELOG: &str = "changelog";
pub const STEP_SEND_OFFSETS: &str = "send_offsets";
pub const STEP_END_TXN: &str = "end_txn";
pub const STEP_STATE_APPLY: &str = "state_apply";

#[derive(Clone)]
pub struct WorkerMetrics {
    pub(crate) records: IntCounterVec,
    pub(crate) transactions: IntCounterVec,
    pub(crate) restored: IntCounterVec,
    pub(crate) restore_seconds: HistogramVec,
    pub(crate) commit_seconds: HistogramVec,
    pub(crate) rebalances: IntCounterVec,
    pub(crate) assigned: IntGaugeVec,
    pub(crate) lag_records: IntGaugeVec,
    pub(crate) lag_seconds: prometheus::GaugeVec,
    pub(crate) watermark_lag: prometheus::GaugeVec,
    pub(crate) close_delay: HistogramVec,
    pub(crate) dead_letters: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn fgauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    register(registry, prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels).expect("valid metric"))
}

const SECONDS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl WorkerMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            records: counter(
                registry,
                "huntflow_stage_records_total",
                "Input records by stage and outcome.",
                &["stage", "outcome"],
            ),
            transactions: counter(
                registry,
                "huntflow_stage_transactions_total",
                "Transactions by stage and result.",
                &["stage", "result"],
            ),
            restored: counter(
                registry,
                "huntflow_state_restored_records_total",
                "Changelog records applied to local state while restoring.",
                &["stage"],
            ),
            restore_seconds: histogram(
                registry,
                "huntflow_state_restore_duration_seconds",
                "Time to restore one assigned partition from its changelog.",
                &["stage"],
                &SECONDS,
            ),
            commit_seconds: histogram(
                registry,
                "huntflow_stage_commit_duration_seconds",
                "Time of each step of a transaction commit (step=total for the whole).",
                &["stage", "step"],
                &SECONDS,
            ),
            rebalances: counter(
                registry,
                "huntflow_stage_rebalances_total",
                "Partition assignments and revocations.",
                &["stage", "kind"],
            ),
            assigned: gauge(registry, "huntflow_stage_assigned_partitions", "Input partitions assigned.", &["stage"]),
            lag_records: gauge(
                registry,
                "huntflow_stage_consumer_lag_records",
                "Records between the input's high watermark and the worker's position.",
                &["stage", "partition"],
            ),
            lag_seconds: fgauge(
                registry,
                "huntflow_stage_consumer_lag_seconds",
                "Age of the last input record read while the partition lags (0 when caught up).",
                &["stage", "partition"],
            ),
            watermark_lag: fgauge(
                registry,
                "huntflow_stage_watermark_lag_seconds",
                "Wall clock minus the lowest event-time watermark of the stage's partitions.",
                &["stage"],
            ),
            close_delay: histogram(
                registry,
                "huntflow_window_close_delay_seconds",
                "Wall clock at a prize batch minus its window's end + grace.",
                &["stage"],
                &SECONDS,
            ),
            dead_letters: counter(
                registry,
                "huntflow_dead_letter_records_total",
                "Records sent to the dead-letter topic, by stage and reason code.",
                &["stage", "reason"],
            ),
        }
    }
}

/// Mean duration and count of each commit step, by (stage, step), from the
/// `huntflow_stage_commit_duration_seconds` histograms in `registry`.
pub fn commit_steps(registry: &Registry) -> std::collections::BTreeMap<(String, String), (u64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    for family in registry.gather().iter().filter(|f| f.name() == "huntflow_stage_commit_duration_seconds") {
        for m in family.get_metric() {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned());
            let key = (label("stage").unwrap_or_default(), label("step").unwrap_or_default());
            let h = m.get_histogram();
            let entry: &mut (u64, f64) = out.entry(key).or_default();
            entry.0 += h.get_sample_count();
            entry.1 += h.get_sample_sum();
        }
    }
    for v in out.values_mut() {
        v.1 /= (v.0 as f64).max(1.0);
    }
    out
}
