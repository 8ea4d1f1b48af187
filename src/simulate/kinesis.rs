//! Simulated shards writing to a Kinesis stream (PutRecords, 500 per call),
//! for the bridge's tests, its benchmark and local demos.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tokio_util::sync::CancellationToken;

use super::{Counters, Item, SimulateError};

pub struct KinesisShard {
    pub client: aws_sdk_kinesis::Client,
    pub stream: String,
}

impl KinesisShard {
    /// Puts every item; entries the service refused (throttling) are retried
    /// until accepted or cancelled.
    pub async fn put(
        &self,
        shard: &str,
        items: &[Item],
        counters: &Counters,
        cancel: &CancellationToken,
    ) -> Result<(), SimulateError> {
        let transport = |message: String| SimulateError::Transport { shard: shard.into(), message };
        for chunk in items.chunks(500) {
            let mut entries = chunk
                .iter()
                .map(|i| {
                    // Partition keys must be 1..=256 characters.
                    let key = if i.key.is_empty() { shard } else { &i.key[..i.key.len().min(256)] };
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(Blob::new(i.bytes.clone()))
                        .build()
                        .map_err(|e| transport(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut attempt = 0u32;
            while !entries.is_empty() && !cancel.is_cancelled() {
                let out = self
                    .client
                    .put_records()
                    .stream_name(&self.stream)
                    .set_records(Some(entries.clone()))
                    .send()
                    .await
                    .map_err(|e| transport(crate::kinesis::KinesisError::api("PutRecords", e).to_string()))?;
                let failed: Vec<PutRecordsRequestEntry> = out
                    .records()
                    .iter()
                    .zip(&entries)
                    .filter(|(r, _)| r.error_code().is_some())
                    .map(|(_, e)| e.clone())
                    .collect();
                counters.accepted.fetch_add((entries.len() - failed.len()) as u64, Ordering::Relaxed);
                if !failed.is_empty() {
                    counters.throttled.fetch_add(failed.len() as u64, Ordering::Relaxed);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20)))).await;
                }
                entries = failed;
            }
        }
        Ok(())
    }
}
