use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::telemetry::register;

#[derive(Clone)]
pub struct IngestMetrics {
    pub requests: IntCounterVec,
    pub events: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub rate_limited: IntCounter,
    pub backpressure: IntCounter,
    pub in_flight: IntGauge,
    pub duration: Histogram,
    /// Events refused for an event_time beyond the clock-skew bound, per
    /// (authenticated, so bounded) shard.
    pub future_events: IntCounterVec,
    pub heartbeats: IntCounter,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            requests: register(
                registry,
                IntCounterVec::new(Opts::new("huntflow_ingest_requests_total", "Ingest HTTP requests by status code."), &["code"]).expect("valid metric"),
            ),
            events: register(
                registry,
                IntCounterVec::new(
                    Opts::new("huntflow_ingest_events_total", "Events posted to ingest by outcome: accepted (acked by the broker), rejected (dead-lettered), failed (not acked, caller told to retry)."),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            dead_letters: register(
                registry,
                IntCounterVec::new(Opts::new("huntflow_dead_letter_records_total", "Records written to the dead-letter topic, by stage and reason code."), &["stage", "reason"]).expect("valid metric"),
            ),
            rate_limited: register(registry, IntCounter::new("huntflow_ingest_rate_limited_total", "Requests refused with 429 by the per-shard rate limit.").expect("valid metric")),
            backpressure: register(registry, IntCounter::new("huntflow_ingest_backpressure_total", "Requests refused with 503 because the in-flight budget stayed full.").expect("valid metric")),
            in_flight: register(registry, IntGauge::new("huntflow_ingest_in_flight_events", "Events accepted by ingest and not yet acknowledged by the broker.").expect("valid metric")),
            future_events: register(
                registry,
                IntCounterVec::new(
                    Opts::new("huntflow_ingest_future_events_total", "Events dead-lettered as event_time_in_future, by shard."),
                    &["shard"],
                )
                .expect("valid metric"),
            ),
            heartbeats: register(
                registry,
                IntCounter::new("huntflow_ingest_heartbeats_total", "Heartbeat rounds written to every events partition.")
                    .expect("valid metric"),
            ),
            duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("huntflow_ingest_request_duration_seconds", "Time from request to response, broker acknowledgement included.")
                        .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )
                .expect("valid metric"),
            ),
        }
    }
}
