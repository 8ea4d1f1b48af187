//! Brings a partition's local store up to the end of its changelog,
//! starting from the offset the store already reflects: a restart or a new
//! owner reads only the missing tail.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::worker::WorkerConfig;
use super::StageError;
use crate::state::{StateStore, Write};

const BATCH: usize = 10_000;

/// What a restore did: records applied, and records it did not need to read
/// because the local store already reflected them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restored {
    pub applied: u64,
    pub already_local: u64,
}

pub fn restore_partition(cfg: &WorkerConfig, store: &StateStore, partition: i32) -> Result<Restored, StageError> {
    let mut from = store.changelog_next(partition)?;
    let consumer: BaseConsumer = cfg
        .client
        .clone()
        .set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(&cfg.changelog_topic, partition, Duration::from_secs(10))?;
    if from > high {
        // The store is ahead of its changelog: the topic was recreated (or
        // this disk belongs to another cluster). The changelog is the truth.
        tracing::warn!(topic = %cfg.changelog_topic, partition, local = from, high, "local state is ahead of its changelog; rebuilding it");
        store.wipe_partition(partition)?;
        from = 0;
    }
    if from > 0 && from < low {
        // Records this store never saw were deleted from the changelog
        // (retention instead of compaction, or a broker that caps partition
        // size like the embedded one): the restored state may miss keys.
        tracing::error!(topic = %cfg.changelog_topic, partition, local = from, low, "changelog lost records this store needs; check cleanup.policy=compact");
    }
    let start = from.max(low);
    let already_local = (start - low).max(0) as u64;
    if start >= high {
        return Ok(Restored { applied: 0, already_local });
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.changelog_topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let mut batch: Vec<Write> = Vec::new();
    let mut applied = 0u64;
    let mut next = start;
    let deadline = Instant::now() + Duration::from_secs(300);
    while next < high {
        if Instant::now() > deadline {
            return Err(StageError::Fatal(format!(
                "restoring {} partition {partition} timed out at {next}/{high}",
                cfg.changelog_topic
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                batch.push((m.key().unwrap_or_default().to_vec(), m.payload().map(<[u8]>::to_vec)));
                next = m.offset() + 1;
                if batch.len() >= BATCH {
                    applied += batch.len() as u64;
                    store.apply(partition, &batch, Some(next))?;
                    batch.clear();
                }
            }
            // End of what read_committed may see (control records or an open
            // transaction beyond it): the tail is restored.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::PartitionEOF))) => break,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    applied += batch.len() as u64;
    store.apply(partition, &batch, Some(next.max(start)))?;
    Ok(Restored { applied, already_local })
}
