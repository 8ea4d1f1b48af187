//! The HTTP ingest gateway: `POST /v1/shards/{shard_id}/events`.
//!
//! A shard authenticates with its own bearer token, is rate-limited per shard
//! (governor, keyed), and gets its answer only after the broker acknowledged
//! every accepted event. Invalid events go to the dead-letter topic with the
//! reason and the original bytes. A bounded in-flight budget pushes back with
//! 503 when the broker is slow instead of queueing without bound.

mod batch;
mod handler;
mod metrics;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use handler::{EventResult, IngestResponse};
pub use metrics::IngestMetrics;

use crate::config::{IngestSettings, ShardTokens};
use crate::kafka::{Cluster, EventProducer};
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Everything a request handler needs; shared by all requests.
pub struct IngestState {
    pub(crate) topology: Topology,
    pub(crate) tokens: ShardTokens,
    pub(crate) limiter: DefaultKeyedRateLimiter<String>,
    pub(crate) producer: EventProducer,
    pub(crate) budget: Arc<Semaphore>,
    pub(crate) max_in_flight: usize,
    pub(crate) queue_timeout: Duration,
    pub(crate) metrics: IngestMetrics,
    pub(crate) registry: Registry,
    pub(crate) cluster: Arc<Cluster>,
}

impl IngestState {
    pub fn new(
        topology: Topology,
        settings: &IngestSettings,
        tokens: ShardTokens,
        producer: EventProducer,
        cluster: Arc<Cluster>,
        registry: Registry,
    ) -> Self {
        let limits = &topology.spec().ingest;
        let rate = NonZeroU32::new(limits.events_per_second_per_shard).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst_per_shard).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            budget: Arc::new(Semaphore::new(settings.max_in_flight_events)),
            max_in_flight: settings.max_in_flight_events,
            queue_timeout: settings.queue_timeout,
            metrics: IngestMetrics::new(&registry),
            topology,
            tokens,
            producer,
            registry,
            cluster,
        }
    }
}

/// The ingest routes, for embedding or testing.
pub fn router(state: Arc<IngestState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/shards/{shard_id}/events", post(handler::post_events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<Arc<IngestState>>| async move { crate::telemetry::render(&s.registry) }),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish (their events are acknowledged or reported failed).
///
/// While it serves, it appends a heartbeat to every events partition each
/// `ingest.heartbeat_interval`, so windows close on the clock even when no
/// shard posts anything.
pub async fn serve(
    listener: TcpListener,
    state: Arc<IngestState>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), IngestError> {
    let beats = tokio::spawn(heartbeats(state.clone()));
    let served = axum::serve(listener, router(state, max_body_bytes)).with_graceful_shutdown(shutdown).await;
    beats.abort();
    served?;
    Ok(())
}

/// This process's writer id: unique per start, so a restarted gateway is a
/// new writer and its predecessor ages out (`heartbeat_writer_timeout`).
fn writer_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("ingest-{host}-{:08x}", rand::random::<u32>())
}

async fn heartbeats(state: Arc<IngestState>) {
    let writer = writer_id();
    let mut every = tokio::time::interval(state.topology.spec().ingest.heartbeat_interval.0);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.producer.send_heartbeats(&writer, crate::event::now_ms()).await {
            Ok(()) => state.metrics.heartbeats.inc(),
            Err(e) => tracing::warn!(error = %e, "heartbeat not acknowledged; windows wait for the next one"),
        }
    }
}

async fn readyz(State(s): State<Arc<IngestState>>) -> (StatusCode, String) {
    let names: Vec<String> = s.topology.spec().topics.all().iter().map(|(_, t)| t.name.clone()).collect();
    match s.cluster.topics_present(names, Duration::from_secs(2)).await {
        Ok(missing) if missing.is_empty() => (StatusCode::OK, "ready".into()),
        Ok(missing) => (StatusCode::SERVICE_UNAVAILABLE, format!("topics missing: {}", missing.join(", "))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("broker unreachable: {e}")),
    }
}
