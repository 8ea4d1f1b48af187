//! Polling mode: GetShardIterator + GetRecords per shard, at most 5 calls per
//! second per shard, backing off with jitter on throttling and getting a new
//! iterator when one expires (after 5 minutes).

use std::time::{Duration, Instant};

use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::reader::{backoff, shard_clock, ReaderCtx, ShardBatch};
use super::KinesisError;

/// Kinesis allows 5 GetRecords per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);

async fn iterator(ctx: &ReaderCtx, shard: &str, after: Option<&str>) -> Result<Option<String>, KinesisError> {
    let req = ctx.client.get_shard_iterator().stream_name(&ctx.spec.stream).shard_id(shard);
    let req = match after {
        Some(seq) => req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq),
        None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    let started = Instant::now();
    let out = req.send().await;
    ctx.waited("GetShardIterator", started);
    Ok(out.map_err(|e| KinesisError::api("GetShardIterator", e))?.shard_iterator().map(str::to_owned))
}

/// Reads `shard` from after `start` (or its beginning) until it is finished
/// or the bridge stops.
pub async fn read_shard(ctx: ReaderCtx, shard: String, start: Option<String>) -> Result<(), KinesisError> {
    let mut last = start;
    let mut attempt = 0u32;
    let mut current: Option<String> = None;
    let mut last_call = Instant::now() - MIN_CALL_SPACING;
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        let it = match current.take() {
            Some(it) => it,
            None => match iterator(&ctx, &shard, last.as_deref()).await {
                Ok(Some(it)) => it,
                // No iterator: the shard is closed and fully read.
                Ok(None) => {
                    ctx.deliver(ShardBatch { shard, records: Vec::new(), finished: true, clock: None }).await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "GetShardIterator failed; retrying");
                    attempt += 1;
                    if !ctx.sleep(backoff(attempt)).await {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        let wait = MIN_CALL_SPACING.saturating_sub(last_call.elapsed());
        if !wait.is_zero() && !ctx.sleep(wait).await {
            return Ok(());
        }
        last_call = Instant::now();
        let out = ctx.client.get_records().shard_iterator(&it).limit(ctx.spec.max_records_per_call).send().await;
        ctx.waited("GetRecords", last_call);
        match out {
            Ok(out) => {
                attempt = 0;
                let records = ctx.take(&shard, out.records(), out.millis_behind_latest());
                let clock = shard_clock(out.millis_behind_latest());
                let finished = out.next_shard_iterator().is_none();
                let empty = records.is_empty();
                if let Some(r) = records.last() {
                    last = Some(r.sequence.clone());
                }
                // Empty batches still carry the clock: time advances on idle shards.
                let news = !empty || finished || clock.is_some();
                if news && !ctx.deliver(ShardBatch { shard: shard.clone(), records, finished, clock }).await {
                    return Ok(());
                }
                if finished {
                    return Ok(());
                }
                current = out.next_shard_iterator().map(str::to_owned);
                if empty && !ctx.sleep(ctx.spec.idle_poll_interval.0).await {
                    return Ok(());
                }
            }
            Err(e) => {
                let service = e.as_service_error();
                if matches!(service, Some(GetRecordsError::ExpiredIteratorException(_))) {
                    ctx.metrics.iterator_refreshes.with_label_values(&[&shard]).inc();
                    continue;
                }
                attempt += 1;
                if matches!(
                    service,
                    Some(GetRecordsError::ProvisionedThroughputExceededException(_))
                        | Some(GetRecordsError::KmsThrottlingException(_))
                ) {
                    ctx.metrics.throttles.with_label_values(&[&shard]).inc();
                    tracing::debug!(shard, "GetRecords throttled; backing off");
                    current = Some(it);
                } else {
                    tracing::warn!(shard, error = %KinesisError::api("GetRecords", e), "GetRecords failed; retrying with a new iterator");
                    ctx.metrics.iterator_refreshes.with_label_values(&[&shard]).inc();
                }
                if !ctx.sleep(backoff(attempt)).await {
                    return Ok(());
                }
            }
        }
    }
}
