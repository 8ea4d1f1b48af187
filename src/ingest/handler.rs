use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use governor::clock::{Clock, DefaultClock};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use super::batch::{self, BatchError};
use super::IngestState;
use crate::config::TokenCheck;
use crate::event::{self, DecodeError, GameEvent};
use crate::kafka::DeadLetter;

/// Per-event outcome, in request order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventResult {
    pub index: usize,
    /// `accepted` (acked by the broker), `rejected` (dead-lettered with the
    /// reason) or `failed` (not acked: retry it).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestResponse {
    pub accepted: usize,
    pub rejected: usize,
    pub failed: usize,
    pub results: Vec<EventResult>,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

pub async fn post_events(
    State(s): State<Arc<IngestState>>,
    Path(shard): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let response = handle(&s, &shard, &headers, &body).await;
    s.metrics.requests.with_label_values(&[response.status().as_str()]).inc();
    s.metrics.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn handle(s: &IngestState, shard: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    match bearer(headers).map(|t| s.tokens.check(shard, t)) {
        Some(TokenCheck::Ok) => {}
        Some(TokenCheck::OtherShard(_)) => {
            return error(StatusCode::FORBIDDEN, format!("this token may not post for shard {shard}"))
        }
        _ => {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }

    let ndjson = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("ndjson"));
    let items = match batch::split(body, ndjson) {
        Ok(items) => items,
        Err(BatchError::MalformedArray(why)) => return malformed_array(s, shard, body, why).await,
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the batch holds no events");
    }
    let n = items.len();
    if n > s.max_in_flight {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{n} events exceed the in-flight budget of {}", s.max_in_flight),
        );
    }

    let permits = match admit(s, shard, n).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    s.metrics.in_flight.add(n as i64);
    let response = process(s, shard, &items).await;
    s.metrics.in_flight.sub(n as i64);
    drop(permits);
    response
}

/// A body that starts `[` but is not a JSON array: one dead-letter record,
/// so it costs the shard one event of its rate limit and of the in-flight
/// budget, like any event, before it is written.
async fn malformed_array(s: &IngestState, shard: &str, body: &[u8], why: String) -> Response {
    let permits = match admit(s, shard, 1).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // Nothing can be told apart in a broken array: keep the whole body.
    let reason = format!("malformed JSON array: {why}");
    s.metrics.in_flight.add(1);
    let written = dead_letter(s, shard, "malformed_batch", reason.clone(), body).await;
    s.metrics.in_flight.sub(1);
    drop(permits);
    match written {
        Ok(()) => {
            s.metrics.events.with_label_values(&["rejected"]).inc();
            error(StatusCode::BAD_REQUEST, format!("{reason} (the body was dead-lettered)"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}; dead-lettering failed too: {e}")),
    }
}

/// Takes `n` events from the shard's rate limit, then `n` permits of the
/// in-flight budget (waiting up to the queue timeout); or the answer to give.
async fn admit(s: &IngestState, shard: &str, n: usize) -> Result<OwnedSemaphorePermit, Response> {
    let cells = NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
    match s.limiter.check_key_n(&shard.to_owned(), cells) {
        Ok(Ok(())) => {}
        Ok(Err(not_until)) => {
            s.metrics.rate_limited.inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut r =
                error(StatusCode::TOO_MANY_REQUESTS, format!("shard {shard} is over its rate limit; retry in {secs}s"));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return Err(r);
        }
        Err(_) => {
            let burst = s.topology.spec().ingest.burst_per_shard;
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{n} events exceed the shard burst of {burst}; send smaller batches"),
            ));
        }
    }

    match tokio::time::timeout(s.queue_timeout, s.budget.clone().acquire_many_owned(n as u32)).await {
        Ok(Ok(p)) => Ok(p),
        _ => {
            s.metrics.backpressure.inc();
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "ingest is waiting on the broker; retry shortly");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(r)
        }
    }
}

async fn process(s: &IngestState, shard: &str, items: &[&[u8]]) -> Response {
    let limits = &s.topology.spec().ingest;
    let (max, skew) = (limits.max_event_bytes, limits.max_clock_skew.as_millis() as i64);
    let now = event::now_ms();
    let mut valid: Vec<(usize, GameEvent)> = Vec::new();
    let mut invalid: Vec<(usize, DecodeError)> = Vec::new();
    for (i, raw) in items.iter().enumerate() {
        let checked = event::decode(raw, max)
            .and_then(|e| e.check_against(&s.topology, shard).map(|()| e))
            .and_then(|e| e.check_clock(now, skew).map(|()| e));
        match checked {
            Ok(e) => valid.push((i, e)),
            Err(err) => {
                if let DecodeError::EventTimeInFuture { .. } = err {
                    s.metrics.future_events.with_label_values(&[shard]).inc();
                }
                invalid.push((i, err))
            }
        }
    }

    let events: Vec<GameEvent> = valid.iter().map(|(_, e)| e.clone()).collect();
    let (sent, dead) = tokio::join!(
        s.producer.send_events(&events),
        join_all(invalid.iter().map(|(i, err)| dead_letter(s, shard, err.code(), err.to_string(), items[*i])))
    );

    let mut results: Vec<Option<EventResult>> = vec![None; items.len()];
    for ((i, _), r) in valid.iter().zip(sent) {
        results[*i] = Some(match r {
            Ok(()) => EventResult { index: *i, status: "accepted".into(), reason_code: None, reason: None },
            Err(e) => EventResult {
                index: *i,
                status: "failed".into(),
                reason_code: Some("delivery".into()),
                reason: Some(e.to_string()),
            },
        });
    }
    for ((i, err), r) in invalid.iter().zip(dead) {
        results[*i] = Some(match r {
            Ok(()) => EventResult {
                index: *i,
                status: "rejected".into(),
                reason_code: Some(err.code().into()),
                reason: Some(err.to_string()),
            },
            Err(e) => EventResult {
                index: *i,
                status: "failed".into(),
                reason_code: Some("delivery".into()),
                reason: Some(format!("{err}; dead-lettering failed: {e}")),
            },
        });
    }
    let results: Vec<EventResult> = results.into_iter().flatten().collect();
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let body =
        IngestResponse { accepted: count("accepted"), rejected: count("rejected"), failed: count("failed"), results };
    for (outcome, n) in [("accepted", body.accepted), ("rejected", body.rejected), ("failed", body.failed)] {
        s.metrics.events.with_label_values(&[outcome]).inc_by(n as u64);
    }
    let code = if body.failed > 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(body)).into_response()
}

async fn dead_letter(
    s: &IngestState,
    shard: &str,
    code: &str,
    reason: String,
    original: &[u8],
) -> Result<(), crate::kafka::ProduceError> {
    let r = s
        .producer
        .send_dead_letter(DeadLetter { stage: "ingest", reason_code: code, reason, shard: Some(shard), original })
        .await;
    if r.is_ok() {
        s.metrics.dead_letters.with_label_values(&["ingest", code]).inc();
    }
    r
}
