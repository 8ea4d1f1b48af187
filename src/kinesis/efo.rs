//! Enhanced fan-out: ONE registered stream consumer (reused when it exists)
//! and a SubscribeToShard per shard. Records arrive pushed and in sequence
//! order. A subscription ends every 5 minutes; it is renewed from the last
//! sequence number. One that sends nothing past the silence deadline is
//! replaced, and one that only sends empty events while the shard has records
//! is replaced too, so a half-open subscription cannot stall a shard.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::operation::register_stream_consumer::RegisterStreamConsumerError;
use aws_sdk_kinesis::types::{ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream};

use super::reader::{backoff, shard_clock, ReaderCtx, ShardBatch};
use super::KinesisError;

/// Registers the stream consumer, or finds the one registered before, and
/// waits until it is ACTIVE. Returns its ARN.
pub async fn ensure_consumer(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    name: &str,
) -> Result<String, KinesisError> {
    let summary = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| KinesisError::api("DescribeStreamSummary", e))?;
    let stream_arn = summary.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default();
    match client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await {
        Ok(_) => tracing::info!(consumer = name, "registered the enhanced fan-out consumer"),
        Err(e) if matches!(e.as_service_error(), Some(RegisterStreamConsumerError::ResourceInUseException(_))) => {
            tracing::info!(consumer = name, "reusing the registered enhanced fan-out consumer")
        }
        Err(e) => return Err(KinesisError::api("RegisterStreamConsumer", e)),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = client
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| KinesisError::api("DescribeStreamConsumer", e))?;
        if let Some(c) = out.consumer_description() {
            if *c.consumer_status() == ConsumerStatus::Active {
                return Ok(c.consumer_arn().to_owned());
            }
        }
        if Instant::now() > deadline {
            return Err(KinesisError::Consumer(format!("consumer {name} did not become ACTIVE within 60 s")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

enum Ended {
    Resubscribe(&'static str),
    Finished,
    Stopped,
}

/// Reads `shard` through subscriptions from after `start` (or its beginning)
/// until it is finished or the bridge stops.
pub async fn read_shard(
    ctx: ReaderCtx,
    consumer_arn: String,
    shard: String,
    start: Option<String>,
) -> Result<(), KinesisError> {
    let mut last = start;
    let mut attempt = 0u32;
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        let position = match &last {
            Some(seq) => {
                StartingPosition::builder().r#type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq)
            }
            None => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon),
        }
        .build()
        .map_err(|e| KinesisError::Consumer(e.to_string()))?;
        let started = Instant::now();
        let subscribed = ctx
            .client
            .subscribe_to_shard()
            .consumer_arn(&consumer_arn)
            .shard_id(&shard)
            .starting_position(position)
            .send()
            .await;
        ctx.waited("SubscribeToShard", started);
        let mut out = match subscribed {
            Ok(out) => out,
            Err(e) => {
                // ResourceInUse: the previous subscription is still open on
                // the service side; LimitExceeded: one subscribe per second.
                attempt += 1;
                ctx.metrics.throttles.with_label_values(&[&shard]).inc();
                tracing::warn!(shard, error = %KinesisError::api("SubscribeToShard", e), "subscribe failed; retrying");
                if !ctx.sleep(backoff(attempt)).await {
                    return Ok(());
                }
                continue;
            }
        };
        let silence: Duration = ctx.spec.subscription_silence_timeout.0;
        let mut last_record_at = Instant::now();
        let ended = loop {
            let waiting = Instant::now();
            let next = tokio::select! {
                _ = ctx.cancel.cancelled() => break Ended::Stopped,
                next = tokio::time::timeout(silence, out.event_stream.recv()) => next,
            };
            ctx.waited("SubscribeToShard", waiting);
            match next {
                Err(_) => break Ended::Resubscribe("silence"),
                Ok(Ok(None)) => break Ended::Resubscribe("ended"),
                Ok(Err(e)) => {
                    tracing::warn!(shard, error = %e, "subscription failed; resubscribing");
                    attempt += 1;
                    break Ended::Resubscribe("error");
                }
                Ok(Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev)))) => {
                    attempt = 0;
                    let records = ctx.take(&shard, ev.records(), Some(ev.millis_behind_latest()));
                    let clock = shard_clock(Some(ev.millis_behind_latest()));
                    // Children listed: the shard is closed and this event
                    // carried its last records.
                    let finished = !ev.child_shards().is_empty();
                    if let Some(r) = records.last() {
                        last = Some(r.sequence.clone());
                        last_record_at = Instant::now();
                    }
                    // Empty events still carry the clock: time advances on idle shards.
                    if !ctx.deliver(ShardBatch { shard: shard.clone(), records, finished, clock }).await {
                        break Ended::Stopped;
                    }
                    if finished {
                        break Ended::Finished;
                    }
                    if last_record_at.elapsed() >= silence {
                        // Only empty events for a while: the shard may be
                        // closed without the subscription saying so, or the
                        // subscription may be stuck behind records.
                        last_record_at = Instant::now();
                        match probe(&ctx, &shard, last.as_deref()).await {
                            Probe::Finished => {
                                if !ctx
                                    .deliver(ShardBatch {
                                        shard: shard.clone(),
                                        records: Vec::new(),
                                        finished: true,
                                        clock: None,
                                    })
                                    .await
                                {
                                    break Ended::Stopped;
                                }
                                break Ended::Finished;
                            }
                            Probe::HasRecords => break Ended::Resubscribe("stalled"),
                            Probe::Quiet => {}
                        }
                    }
                }
                Ok(Ok(Some(_))) => {}
            }
        };
        match ended {
            Ended::Stopped | Ended::Finished => return Ok(()),
            Ended::Resubscribe(reason) => {
                ctx.metrics.resubscribes.with_label_values(&[shard.as_str(), reason]).inc();
                tracing::debug!(shard, reason, "resubscribing");
                if reason == "silence" {
                    if let Probe::Finished = probe(&ctx, &shard, last.as_deref()).await {
                        ctx.deliver(ShardBatch { shard, records: Vec::new(), finished: true, clock: None }).await;
                        return Ok(());
                    }
                }
                if attempt > 0 && !ctx.sleep(backoff(attempt)).await {
                    return Ok(());
                }
            }
        }
    }
}

enum Probe {
    Finished,
    HasRecords,
    Quiet,
}

/// One GetRecords after `last`: no records and no next iterator means the
/// shard is closed and fully read.
async fn probe(ctx: &ReaderCtx, shard: &str, last: Option<&str>) -> Probe {
    let req = ctx.client.get_shard_iterator().stream_name(&ctx.spec.stream).shard_id(shard);
    let req = match last {
        Some(seq) => req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq),
        None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    let started = Instant::now();
    let it = match req.send().await {
        Ok(out) => out.shard_iterator().map(str::to_owned),
        Err(e) => {
            tracing::debug!(shard, error = %KinesisError::api("GetShardIterator", e), "probe failed");
            return Probe::Quiet;
        }
    };
    let Some(it) = it else { return Probe::Finished };
    let out = ctx.client.get_records().shard_iterator(it).limit(1).send().await;
    ctx.waited("GetRecords", started);
    match out {
        Ok(o) if !o.records().is_empty() => Probe::HasRecords,
        Ok(o) if o.next_shard_iterator().is_none() => Probe::Finished,
        _ => Probe::Quiet,
    }
}
