//! What shard readers (polling or enhanced fan-out) hand to the committer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::Record;
use aws_sdk_kinesis::Client;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::BridgeMetrics;
use crate::topology::KinesisSourceSpec;

/// One Kinesis record, as the committer needs it.
#[derive(Clone, Debug)]
pub struct ShardRecord {
    pub sequence: String,
    pub data: Vec<u8>,
}

/// Records of one shard in sequence order; `finished` when the shard is
/// closed and nothing follows the last record. May be empty: it then only
/// reports the shard's clock (or that it finished).
#[derive(Debug)]
pub struct ShardBatch {
    pub shard: String,
    pub records: Vec<ShardRecord>,
    pub finished: bool,
    /// The shard's arrival clock after this batch (ms since the epoch):
    /// every later record of the shard arrived in Kinesis at or after it.
    /// The response's wall time minus Kinesis' `MillisBehindLatest`; `None`
    /// when Kinesis did not say how far behind the reader is.
    pub clock: Option<i64>,
}

/// A shard's arrival clock from a response that was `behind_ms` behind the
/// tip of the stream (see [`ShardBatch::clock`]).
pub fn shard_clock(behind_ms: Option<i64>) -> Option<i64> {
    behind_ms.map(|b| crate::event::now_ms() - b.max(0))
}

/// Everything a shard reader needs.
#[derive(Clone)]
pub struct ReaderCtx {
    pub client: Client,
    pub spec: KinesisSourceSpec,
    pub metrics: BridgeMetrics,
    pub tx: mpsc::Sender<ShardBatch>,
    pub cancel: CancellationToken,
}

impl ReaderCtx {
    /// Sends a batch; false when the bridge is stopping.
    pub async fn deliver(&self, batch: ShardBatch) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            sent = self.tx.send(batch) => sent.is_ok(),
        }
    }

    /// Sleeps unless the bridge stops first; false when it stops.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    pub fn waited(&self, call: &str, since: Instant) {
        self.metrics.kinesis_wait.with_label_values(&[call]).inc_by(since.elapsed().as_secs_f64());
    }

    /// Records the lag gauges of `shard` and converts the records.
    pub fn take(&self, shard: &str, records: &[Record], behind_ms: Option<i64>) -> Vec<ShardRecord> {
        if let Some(ms) = behind_ms {
            self.metrics.behind_latest.with_label_values(&[shard]).set(ms);
        }
        if let Some(arrival) = records.last().and_then(|r| r.approximate_arrival_timestamp()) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            let age = now - arrival.to_millis().unwrap_or(now);
            self.metrics.iterator_age.with_label_values(&[shard]).set(age.max(0) / 1000);
        }
        records
            .iter()
            .map(|r| ShardRecord { sequence: r.sequence_number().to_owned(), data: r.data().as_ref().to_vec() })
            .collect()
    }
}

/// Exponential backoff with full jitter (the AWS architecture blog's
/// recommendation): a random wait in `0..min(cap, base * 2^attempt)`.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = (200u64 << attempt.min(5)).min(5_000);
    Duration::from_millis(rand::rng().random_range(ceiling / 4..=ceiling))
}
