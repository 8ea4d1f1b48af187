//! The idempotent producer behind ingest: acks=all, `enable.idempotence`,
//! every record stamped with the topology hash. A delivery failure is always
//! returned to the caller, never dropped.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::headers::*;
use super::{Cluster, KafkaError};
use crate::event::GameEvent;
use crate::topology::Topology;

/// Dead letters keep at most this many bytes of the original record, so an
/// oversized body cannot exceed the broker's message size limit.
pub const MAX_DEAD_LETTER_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("broker did not acknowledge: {0}")]
    Delivery(rdkafka::error::KafkaError),
}

/// A record no stage could process, with why.
pub struct DeadLetter<'a> {
    pub stage: &'a str,
    pub reason_code: &'a str,
    pub reason: String,
    pub shard: Option<&'a str>,
    pub original: &'a [u8],
}

type Delivery =
    Result<rdkafka::producer::future_producer::Delivery, (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage)>;

fn acks(results: Vec<Delivery>) -> Vec<Result<(), ProduceError>> {
    results.into_iter().map(|r| r.map(|_| ()).map_err(|(e, _)| ProduceError::Delivery(e))).collect()
}

#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
    topology: Topology,
    events_topic: String,
    dead_letter_topic: String,
    queue_timeout: Duration,
}

impl EventProducer {
    pub fn new(cluster: &Cluster, topology: &Topology, delivery_timeout: Duration) -> Result<Self, KafkaError> {
        let inner: FutureProducer = cluster
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // Same partition for the same key as the Java client, so other
            // producers of the events topic agree with us.
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .create()?;
        let topics = &topology.spec().topics;
        Ok(Self {
            inner,
            topology: topology.clone(),
            events_topic: topics.events.name.clone(),
            dead_letter_topic: topics.dead_letter.name.clone(),
            queue_timeout: delivery_timeout,
        })
    }

    fn base_headers(&self, schema: &str) -> OwnedHeaders {
        OwnedHeaders::new()
            .insert(Header { key: HEADER_TOPOLOGY_HASH, value: Some(self.topology.hash()) })
            .insert(Header { key: HEADER_SCHEMA, value: Some(schema) })
    }

    /// Sends every event and waits until the broker acknowledged each one.
    /// Result `i` belongs to `events[i]`.
    pub async fn send_events(&self, events: &[GameEvent]) -> Vec<Result<(), ProduceError>> {
        let payloads: Vec<Vec<u8>> = events.iter().map(GameEvent::encode).collect();
        let sends = events.iter().zip(&payloads).map(|(event, payload)| {
            let headers =
                self.base_headers("game-event/v1").insert(Header { key: HEADER_SHARD, value: Some(&event.shard_id) });
            let record = FutureRecord::to(&self.events_topic).key(event.claim_key()).payload(payload).headers(headers);
            // `send` waits for queue room up to the timeout instead of failing
            // on a full local queue: that wait is our backpressure.
            self.inner.send(record, Timeout::After(self.queue_timeout))
        });
        acks(join_all(sends).await)
    }

    /// Sends pre-encoded records to the events topic as they are, valid or
    /// not: `simulate --direct` uses it to feed the claim stage garbage too.
    pub async fn send_raw_events(&self, records: &[(&str, &[u8])]) -> Vec<Result<(), ProduceError>> {
        let sends = records.iter().map(|(key, payload)| {
            let record = FutureRecord::to(&self.events_topic)
                .key(*key)
                .payload(*payload)
                .headers(self.base_headers("game-event/v1"));
            self.inner.send(record, Timeout::After(self.queue_timeout))
        });
        acks(join_all(sends).await)
    }

    /// Appends a heartbeat of `writer` at `time` to every events partition
    /// and waits for the acknowledgements: from now on this writer sends
    /// nothing it stamped before `time` (the idempotent producer keeps each
    /// partition in send order).
    pub async fn send_heartbeats(&self, writer: &str, time: i64) -> Result<(), ProduceError> {
        use crate::windowing::{TimeRecord, HEARTBEAT_KEY, SCHEMA_HEARTBEAT};
        let payload = TimeRecord::Heartbeat { writer: writer.to_owned(), time }.encode();
        let partitions = self.topology.spec().topics.events.partitions;
        let sends = (0..partitions).map(|p| {
            let record = FutureRecord::to(&self.events_topic)
                .key(HEARTBEAT_KEY)
                .payload(&payload)
                .partition(p)
                .headers(self.base_headers(SCHEMA_HEARTBEAT));
            self.inner.send(record, Timeout::After(self.queue_timeout))
        });
        acks(join_all(sends).await).into_iter().collect()
    }

    pub async fn send_dead_letter(&self, dl: DeadLetter<'_>) -> Result<(), ProduceError> {
        let kept = &dl.original[..dl.original.len().min(MAX_DEAD_LETTER_BYTES)];
        let size = dl.original.len().to_string();
        let mut headers = self
            .base_headers("dead-letter/v1")
            .insert(Header { key: HEADER_STAGE, value: Some(dl.stage) })
            .insert(Header { key: HEADER_REASON_CODE, value: Some(dl.reason_code) })
            .insert(Header { key: HEADER_REASON, value: Some(&dl.reason) });
        if let Some(shard) = dl.shard {
            headers = headers.insert(Header { key: HEADER_SHARD, value: Some(shard) });
        }
        if kept.len() < dl.original.len() {
            headers = headers.insert(Header { key: HEADER_ORIGINAL_SIZE, value: Some(&size) });
        }
        let key = dl.shard.unwrap_or(dl.stage);
        let record = FutureRecord::to(&self.dead_letter_topic).key(key).payload(kept).headers(headers);
        self.inner
            .send(record, Timeout::After(self.queue_timeout))
            .await
            .map(|_| ())
            .map_err(|(e, _)| ProduceError::Delivery(e))
    }
}
