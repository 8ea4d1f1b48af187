//! One shard's HTTP client: NDJSON batches, honouring 429 Retry-After and
//! re-sending only the events a 503 reports as failed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::{Counters, Item, SimulateError};
use crate::ingest::IngestResponse;

pub struct HttpShard {
    client: reqwest::Client,
    url: String,
    auth: String,
    shard: String,
}

const MAX_ATTEMPTS: u32 = 50;

impl HttpShard {
    pub fn new(client: reqwest::Client, base_url: &str, shard: &str, token: String) -> Self {
        Self {
            client,
            url: format!("{}/v1/shards/{shard}/events", base_url.trim_end_matches('/')),
            auth: format!("Bearer {token}"),
            shard: shard.to_owned(),
        }
    }

    fn err(&self, message: impl ToString) -> SimulateError {
        SimulateError::Transport { shard: self.shard.clone(), message: message.to_string() }
    }

    pub async fn post(
        &self,
        items: &[Item],
        counters: &Counters,
        cancel: &CancellationToken,
    ) -> Result<(), SimulateError> {
        let mut pending: Vec<&Item> = items.iter().collect();
        for attempt in 0..MAX_ATTEMPTS {
            let mut body = Vec::with_capacity(pending.iter().map(|i| i.bytes.len() + 1).sum());
            for item in &pending {
                body.extend_from_slice(&item.bytes);
                body.push(b'\n');
            }
            let response = self
                .client
                .post(&self.url)
                .header(AUTHORIZATION, &self.auth)
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(body)
                .send()
                .await;
            let response = match response {
                Ok(r) => r,
                Err(e) if attempt + 1 < MAX_ATTEMPTS => {
                    tracing::warn!(shard = %self.shard, error = %e, "post failed, retrying");
                    backoff(attempt, cancel).await;
                    continue;
                }
                Err(e) => return Err(self.err(e)),
            };
            let status = response.status();
            let retry_after =
                response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    counters.throttled.fetch_add(1, Ordering::Relaxed);
                    let wait = Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(5));
                    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = cancel.cancelled() => return Ok(()) }
                }
                StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE => {
                    let text = response.text().await.map_err(|e| self.err(e))?;
                    match serde_json::from_str::<IngestResponse>(&text) {
                        Ok(parsed) => {
                            counters.accepted.fetch_add(parsed.accepted as u64, Ordering::Relaxed);
                            counters.rejected.fetch_add(parsed.rejected as u64, Ordering::Relaxed);
                            pending = parsed
                                .results
                                .iter()
                                .filter(|r| r.status == "failed")
                                .filter_map(|r| pending.get(r.index).copied())
                                .collect();
                        }
                        // A 503 without per-event results (backpressure): nothing was taken.
                        Err(_) if status == StatusCode::SERVICE_UNAVAILABLE => {}
                        Err(e) => return Err(self.err(format!("unreadable response: {e}"))),
                    }
                    if pending.is_empty() {
                        return Ok(());
                    }
                    counters.retried.fetch_add(pending.len() as u64, Ordering::Relaxed);
                    backoff(attempt, cancel).await;
                }
                other => {
                    let body = response.text().await.unwrap_or_default();
                    return Err(SimulateError::Refused { shard: self.shard.clone(), status: other.as_u16(), body });
                }
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
        Err(self.err(format!("gave up after {MAX_ATTEMPTS} attempts")))
    }
}

async fn backoff(attempt: u32, cancel: &CancellationToken) {
    let wait = Duration::from_millis(50 * 2u64.pow(attempt.min(6)));
    tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = cancel.cancelled() => {} }
}
