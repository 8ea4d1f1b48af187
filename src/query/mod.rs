//! The leaderboard query API: materializes the compacted leaderboards topic
//! (read_committed, keeping the highest version per board, so a replayed or
//! aborted-then-replayed snapshot changes nothing) and answers
//! `GET /v1/hunts/{hunt}/tiers/{tier}/leaderboard?board=lifetime|<window start>&limit=N`.
//!
//! Memory is bounded: a window board is dropped once its tier's watermark
//! (the highest a snapshot of that hunt and tier carried) is `retention`
//! past the window's close (end + grace), and when a tombstone (null value)
//! for its key arrives. A dropped window is never taken back: a replayed or
//! late snapshot of it, or of an older window of the tier, is ignored.

mod view;

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{HistogramOpts, HistogramVec, IntGauge, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::rank::Snapshot;
use crate::telemetry::{self, register};
use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("leaderboards topic {0} not found")]
    MissingTopic(String),
    #[error("serve: {0}")]
    Serve(#[from] std::io::Error),
}

pub use view::Boards;

/// Follows the leaderboards topic on a dedicated thread until `cancel`.
pub fn materialize(
    client: &ClientConfig,
    topic: &str,
    boards: Boards,
    cancel: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, QueryError> {
    let consumer: BaseConsumer = crate::kafka::quick_fetch(client)
        .set("group.id", "huntflow-query")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let partitions = crate::kafka::topic_partitions(&consumer, topic, Duration::from_secs(10))?;
    if partitions.is_empty() {
        return Err(QueryError::MissingTopic(topic.into()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let handle = std::thread::Builder::new().name("huntflow-query".into()).spawn(move || {
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => match m.payload().filter(|p| !p.is_empty()).map(serde_json::from_slice::<Snapshot>) {
                    Some(Ok(snap)) => boards.offer(snap),
                    Some(Err(e)) => tracing::warn!(offset = m.offset(), error = %e, "unreadable leaderboard snapshot"),
                    None => boards.tombstone(&String::from_utf8_lossy(m.key().unwrap_or_default())),
                },
                Some(Err(e)) => tracing::debug!(error = %e, "leaderboards consumer"),
                None => {}
            }
        }
    })?;
    Ok(handle)
}

#[derive(Clone)]
struct ApiState {
    topology: Topology,
    boards: Boards,
    latency: HistogramVec,
    held: IntGauge,
    registry: Registry,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardQuery {
    board: Option<String>,
    limit: Option<usize>,
}

fn not_found(message: String) -> Response {
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn leaderboard(
    State(api): State<ApiState>,
    Path((hunt, tier)): Path<(String, String)>,
    Query(q): Query<BoardQuery>,
) -> Response {
    let started = Instant::now();
    let (status, response) = answer(&api, &hunt, &tier, q);
    api.latency.with_label_values(&[status]).observe(started.elapsed().as_secs_f64());
    response
}

fn answer(api: &ApiState, hunt: &str, tier: &str, q: BoardQuery) -> (&'static str, Response) {
    let Some(h) = api.topology.hunt(hunt) else {
        return ("404", not_found(format!("unknown hunt `{hunt}`")));
    };
    if api.topology.tier_index(hunt, tier).is_none() {
        let tiers: Vec<&str> = h.tiers.iter().map(|t| t.name.as_str()).collect();
        return ("404", not_found(format!("hunt `{hunt}` has no tier `{tier}` (tiers: {})", tiers.join(", "))));
    }
    let board = q.board.unwrap_or_else(|| "lifetime".into());
    if board != "lifetime" && board.parse::<i64>().is_err() {
        let msg = format!("board must be `lifetime` or a window start in epoch ms, not `{board}`");
        return ("400", (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": msg }))).into_response());
    }
    let Some(snap) = api.boards.get(hunt, tier, &board) else {
        return ("404", not_found(format!("no leaderboard published yet for {hunt}/{tier} board {board}")));
    };
    let limit = q.limit.unwrap_or(usize::MAX).min(snap.entries.len());
    let mut body = Snapshot::clone(&snap);
    body.entries.truncate(limit);
    ("200", Json(body).into_response())
}

/// The query API router; `registry` also serves `/metrics`.
pub fn router(topology: Topology, boards: Boards, registry: Registry) -> Router {
    let latency = register(
        &registry,
        HistogramVec::new(
            HistogramOpts::new("huntflow_query_duration_seconds", "Leaderboard query handling time by status.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05]),
            &["status"],
        )
        .expect("valid metric"),
    );
    let held = register(
        &registry,
        IntGauge::new("huntflow_query_boards", "Leaderboards held in memory (lifetime and windows within retention).")
            .expect("valid metric"),
    );
    let state = ApiState { topology, boards, latency, held, registry };
    Router::new()
        .route("/v1/hunts/{hunt}/tiers/{tier}/leaderboard", get(leaderboard))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(api): State<ApiState>| async move {
                api.held.set(api.boards.len() as i64);
                telemetry::render(&api.registry)
            }),
        )
        .with_state(state)
}

/// Serves the query API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    topology: Topology,
    boards: Boards,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), QueryError> {
    let app = router(topology, boards, registry);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Top `n` of the lifetime board of each tier of each hunt, one line per tier.
pub fn top_lines(topology: &Topology, boards: &Boards, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for hunt in &topology.spec().hunts {
        for tier in &hunt.tiers {
            let Some(snap) = boards.get(&hunt.id, &tier.name, "lifetime") else { continue };
            let top: Vec<String> =
                snap.entries.iter().take(n).map(|e| format!("{}. {} {}", e.rank, e.player_id, e.points)).collect();
            lines.push(format!("{:<10} {}", tier.name, top.join(" | ")));
        }
    }
    lines
}
