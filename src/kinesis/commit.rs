//! The bridge's transactional producer: one Kafka transaction holds a batch
//! of Kinesis records (as events or dead letters) and the checkpoint of every
//! shard they came from, so records and resume points commit together.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::ClientConfig;

use super::checkpoint::{barrier_record, Checkpoint};
use super::reader::ShardBatch;
use super::KinesisError;
use crate::event::{decode, DecodeError};
use crate::kafka::transactional::TxnProducer;
use crate::kafka::{
    HEADER_KINESIS_SEQUENCE, HEADER_KINESIS_SHARD, HEADER_KINESIS_TXN, HEADER_ORIGINAL_SIZE, HEADER_REASON,
    HEADER_REASON_CODE, HEADER_SCHEMA, HEADER_SHARD, HEADER_STAGE, HEADER_TOPOLOGY_HASH,
};
use crate::topology::Topology;

/// Stage name on the bridge's dead letters.
pub const STAGE: &str = "kinesis-bridge";
/// First bytes of a KPL-aggregated record.
const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Outcome of one committed batch.
#[derive(Debug, Default)]
pub struct Committed {
    pub checkpoints: Vec<Checkpoint>,
    /// (shard, records, bytes) written.
    pub per_shard: Vec<(String, u64, u64)>,
    /// Dead letters by reason code.
    pub dead_letters: BTreeMap<&'static str, u64>,
}

/// A heartbeat to append after a transaction's records: `writer` copies
/// nothing that arrived in Kinesis before `time` from now on.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat<'a> {
    pub writer: &'a str,
    pub time: i64,
}

pub struct TxnWriter {
    /// The stage workers' transactional producer: one record path, flush
    /// and commit retry policy for both.
    txn: TxnProducer,
    topology: Topology,
    stream: String,
    events_topic: String,
    dead_letter_topic: String,
    checkpoint_topic: String,
    timeout: Duration,
    /// Tags every record with this process run and its transaction number.
    run: String,
    transactions: AtomicU64,
}

impl TxnWriter {
    /// Creates the producer and fences any predecessor with the same
    /// transactional id (blocking; call from a blocking thread).
    pub fn create(
        client: &ClientConfig,
        topology: &Topology,
        transactional_id: &str,
        run: &str,
        timeout: Duration,
    ) -> Result<Self, KinesisError> {
        // Same partitioner (murmur2) as ingest and the Java client, lz4.
        let txn = TxnProducer::new(client, transactional_id, timeout, "")?;
        let spec = topology.spec();
        let kinesis = spec.source.kinesis.as_ref().ok_or(KinesisError::NotConfigured)?;
        Ok(Self {
            txn,
            topology: topology.clone(),
            stream: kinesis.stream.clone(),
            events_topic: spec.topics.events.name.clone(),
            dead_letter_topic: spec.topics.dead_letter.name.clone(),
            checkpoint_topic: kinesis.checkpoints.name.clone(),
            timeout,
            run: run.to_owned(),
            transactions: AtomicU64::new(0),
        })
    }

    /// Commits a barrier record on every checkpoint partition: once the tail
    /// has read it everywhere, it has read every checkpoint committed before.
    pub fn commit_barrier(&self, id: &str, partitions: &[i32]) -> Result<(), KinesisError> {
        self.txn.begin_transaction()?;
        let (key, value) = barrier_record(id);
        for &p in partitions {
            self.send(BaseRecord::to(&self.checkpoint_topic).key(key.as_str()).payload(value.as_slice()).partition(p))?;
        }
        self.finish()
    }

    /// Writes `batches`, their checkpoints and `heartbeat` (after the
    /// records, on every events partition) in one transaction. `previous`
    /// supplies the sequence of a shard whose batch has no records.
    pub fn commit(
        &self,
        batches: &[ShardBatch],
        previous: &BTreeMap<String, Checkpoint>,
        heartbeat: Option<Heartbeat<'_>>,
    ) -> Result<Committed, KinesisError> {
        self.txn.begin_transaction()?;
        let txn = format!("{}:{}", self.run, self.transactions.fetch_add(1, Ordering::SeqCst) + 1);
        let mut out = Committed::default();
        let mut latest: BTreeMap<&str, Checkpoint> = BTreeMap::new();
        let max_bytes = self.topology.spec().ingest.max_event_bytes;
        let max_skew = self.topology.spec().ingest.max_clock_skew.as_millis() as i64;
        let now = crate::event::now_ms();
        let hash = self.topology.hash();
        for batch in batches {
            let (mut n, mut bytes) = (0u64, 0u64);
            for r in &batch.records {
                n += 1;
                bytes += r.data.len() as u64;
                let base = OwnedHeaders::new()
                    .insert(Header { key: HEADER_TOPOLOGY_HASH, value: Some(hash) })
                    .insert(Header { key: HEADER_KINESIS_SHARD, value: Some(&batch.shard) })
                    .insert(Header { key: HEADER_KINESIS_SEQUENCE, value: Some(&r.sequence) })
                    .insert(Header { key: HEADER_KINESIS_TXN, value: Some(&txn) });
                let checked = if r.data.starts_with(&KPL_MAGIC) {
                    Err((
                        "kpl_aggregated",
                        "KPL-aggregated records are not deaggregated; disable aggregation in the KPL".to_owned(),
                    ))
                } else {
                    decode(&r.data, max_bytes)
                        .and_then(|e| e.check_against(&self.topology, &e.shard_id).map(|()| e))
                        .and_then(|e| e.check_clock(now, max_skew).map(|()| e))
                        .map_err(|e: DecodeError| (e.code(), e.to_string()))
                };
                match checked {
                    Ok(event) => {
                        let payload = event.encode();
                        let headers = base
                            .insert(Header { key: HEADER_SCHEMA, value: Some("game-event/v1") })
                            .insert(Header { key: HEADER_SHARD, value: Some(&event.shard_id) });
                        self.send(
                            BaseRecord::to(&self.events_topic)
                                .key(event.claim_key())
                                .payload(payload.as_slice())
                                .headers(headers),
                        )?;
                    }
                    Err((code, reason)) => {
                        let kept = &r.data[..r.data.len().min(crate::kafka::MAX_DEAD_LETTER_BYTES)];
                        let size = r.data.len().to_string();
                        let mut headers = base
                            .insert(Header { key: HEADER_SCHEMA, value: Some("dead-letter/v1") })
                            .insert(Header { key: HEADER_STAGE, value: Some(STAGE) })
                            .insert(Header { key: HEADER_REASON_CODE, value: Some(code) })
                            .insert(Header { key: HEADER_REASON, value: Some(&reason) });
                        if kept.len() < r.data.len() {
                            headers = headers.insert(Header { key: HEADER_ORIGINAL_SIZE, value: Some(&size) });
                        }
                        self.send(
                            BaseRecord::to(&self.dead_letter_topic)
                                .key(batch.shard.as_str())
                                .payload(kept)
                                .headers(headers),
                        )?;
                        *out.dead_letters.entry(code).or_default() += 1;
                    }
                }
            }
            out.per_shard.push((batch.shard.clone(), n, bytes));
            let prior = latest.get(batch.shard.as_str()).cloned().or_else(|| previous.get(&batch.shard).cloned());
            let sequence = batch.records.last().map(|r| r.sequence.clone()).or(prior.and_then(|c| c.sequence));
            latest.insert(
                &batch.shard,
                Checkpoint {
                    stream: self.stream.clone(),
                    shard: batch.shard.clone(),
                    sequence,
                    finished: batch.finished,
                },
            );
        }
        for cp in latest.into_values() {
            let value = serde_json::to_vec(&cp).unwrap_or_default();
            let key = Checkpoint::key(&cp.stream, &cp.shard);
            self.send(BaseRecord::to(&self.checkpoint_topic).key(key.as_str()).payload(value.as_slice()))?;
            out.checkpoints.push(cp);
        }
        if let Some(hb) = heartbeat {
            self.send_heartbeat(hb)?;
        }
        self.finish()?;
        Ok(out)
    }

    fn send_heartbeat(&self, hb: Heartbeat<'_>) -> Result<(), KinesisError> {
        use crate::windowing::{TimeRecord, HEARTBEAT_KEY, SCHEMA_HEARTBEAT};
        let payload = TimeRecord::Heartbeat { writer: hb.writer.to_owned(), time: hb.time }.encode();
        for p in 0..self.topology.spec().topics.events.partitions {
            let headers = OwnedHeaders::new()
                .insert(Header { key: HEADER_TOPOLOGY_HASH, value: Some(self.topology.hash()) })
                .insert(Header { key: HEADER_SCHEMA, value: Some(SCHEMA_HEARTBEAT) });
            self.txn.send(&self.events_topic, HEARTBEAT_KEY, Some(&payload), Some(p), headers)?;
        }
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, str, [u8]>) -> Result<(), KinesisError> {
        let headers = record.headers.unwrap_or_else(OwnedHeaders::new);
        let key = record.key.unwrap_or_default().as_bytes();
        Ok(self.txn.send(record.topic, key, record.payload, record.partition, headers)?)
    }

    fn finish(&self) -> Result<(), KinesisError> {
        // Flush first: a failed delivery is seen before the commit is tried.
        self.txn.flush(self.timeout)?;
        self.txn.deliveries().check("a bridge record").map_err(|_| KinesisError::Delivery)?;
        // A retriable failure (e.g. a timeout) leaves the outcome unknown:
        // the commit is retried, never aborted (that could drop a committed
        // batch from our view and write it twice).
        self.txn.commit(self.timeout)?;
        Ok(())
    }

    /// Aborts the open transaction, if any.
    pub fn abort(&self) -> Result<(), KinesisError> {
        Ok(self.txn.abort(self.timeout)?)
    }
}

/// Whether a failed commit can be retried after an abort, or ends the bridge
/// (fenced by a newer instance with the same transactional id, or a fatal
/// producer error).
pub fn is_fatal(e: &KinesisError) -> bool {
    match e {
        KinesisError::Kafka(KafkaError::Transaction(t)) => t.is_fatal(),
        KinesisError::Kafka(KafkaError::Global(RDKafkaErrorCode::Fatal)) => true,
        _ => false,
    }
}
