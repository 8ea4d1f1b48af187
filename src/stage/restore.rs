//! Brings a partition's local store up to the end of its changelog,
//! starting from the offset the store already reflects: a restart or a new
//! owner reads only the missing tail.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::worker::WorkerConfig;
use super::{StageError, POSITION_KEY};

/// Header naming the transaction a changelog record belongs to.
pub(crate) const HEADER_TXN: &str = "huntflow-txn";
use crate::state::{StateStore, Write};

const BATCH: usize = 10_000;

/// The stage's [`super::StageLogic::index_for`]: local index entries to
/// rebuild next to a restored record.
pub type IndexFor<'a> = dyn Fn(&[u8], Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> + 'a;

/// What a restore did: records applied, and records it did not need to read
/// because the local store already reflected them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restored {
    pub applied: u64,
    pub already_local: u64,
}

/// One changelog reader restores every partition in `partitions` (a
/// rebalance of 32 partitions costs one consumer, not 32 in a row). A
/// partition is restored when the reader's position reaches the high
/// watermark: read_committed stops at the last stable offset, so an open
/// transaction of a previous owner is waited for (bounded by the
/// transaction timeout) instead of restoring half of it.
pub fn restore_partitions(
    cfg: &WorkerConfig,
    store: &StateStore,
    partitions: &[i32],
    index_for: &IndexFor<'_>,
) -> Result<Vec<(i32, Restored)>, StageError> {
    let mut out: BTreeMap<i32, Restored> = BTreeMap::new();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let consumer: BaseConsumer = cfg
        .client
        .clone()
        .set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let topic = cfg.changelog_topic.as_str();
    let mut tpl = TopicPartitionList::new();
    let mut todo: HashMap<i32, i64> = HashMap::new();
    for &p in partitions {
        let (start, high, already_local) = plan(&consumer, topic, store, p)?;
        out.insert(p, Restored { applied: 0, already_local });
        if start < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            todo.insert(p, high);
        }
    }
    if todo.is_empty() {
        return Ok(out.into_iter().collect());
    }
    consumer.assign(&tpl)?;
    let mut groups: HashMap<i32, TxnGroups> = HashMap::new();
    // The bound is on a stall, not on the restore: a large changelog takes
    // as long as it takes, but an open transaction of a previous owner that
    // holds the last stable offset back ends within the transaction timeout.
    let stall = cfg.transaction_timeout + Duration::from_secs(5);
    let mut deadline = Instant::now() + stall;
    while !todo.is_empty() {
        if Instant::now() > deadline {
            let (p, high) = todo.iter().next().map(|(p, h)| (*p, *h)).unwrap_or_default();
            return Err(StageError::Stop(format!(
                "restoring {topic} partition {p} did not reach its end ({high}): nothing new within the \
                 transaction timeout"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                deadline = Instant::now() + stall;
                let p = m.partition();
                let g = groups.entry(p).or_default();
                g.push(&m);
                if g.ready.len() >= BATCH {
                    let next = g.open_from.unwrap_or(m.offset() + 1);
                    flush_batch(store, p, &mut g.ready, next, &mut out, index_for)?;
                }
            }
            // The end of what read_committed may see: done once that is the
            // high watermark (a tail transaction marker counts as read).
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let position = position_of(&consumer, topic, p)?;
                if todo.get(&p).is_some_and(|high| position >= *high) {
                    todo.remove(&p);
                    let g = groups.entry(p).or_default();
                    g.close(topic, p);
                    flush_batch(store, p, &mut g.ready, position, &mut out, index_for)?;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out.into_iter().collect())
}

/// Changelog records grouped by the transaction that wrote them (header
/// `huntflow-txn`). A group counts only if it holds its `\0pos` record,
/// which the runtime writes last: on brokers that show aborted or open
/// transactions to read_committed readers (the embedded one, Tansu), a
/// worker killed mid-commit leaves a partial group, and applying it would
/// apply state whose input position was never recorded (then replayed:
/// counted twice).
#[derive(Default)]
struct TxnGroups {
    /// Complete groups, ready to apply.
    ready: Vec<Write>,
    open: Vec<Write>,
    open_txn: Option<String>,
    /// Offset of the open group's first record.
    open_from: Option<i64>,
    complete: bool,
}

impl TxnGroups {
    fn push(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let txn = crate::kafka::header_str(m, HEADER_TXN);
        if txn.is_none() || txn != self.open_txn {
            let dropped = self.close_quietly();
            if dropped > 0 {
                tracing::warn!(dropped, "ignored the changelog records of an unfinished transaction");
            }
            self.open_txn = txn.clone();
            self.open_from = Some(m.offset());
        }
        let key = m.key().unwrap_or_default();
        self.complete |= key == POSITION_KEY || txn.is_none();
        self.open.push((key.to_vec(), m.payload().map(<[u8]>::to_vec)));
    }

    /// Ends the open group: applied if complete, dropped if not.
    fn close_quietly(&mut self) -> usize {
        let open = std::mem::take(&mut self.open);
        let dropped = if self.complete { 0 } else { open.len() };
        if self.complete {
            self.ready.extend(open);
        }
        self.complete = false;
        self.open_txn = None;
        self.open_from = None;
        dropped
    }

    fn close(&mut self, topic: &str, p: i32) {
        let dropped = self.close_quietly();
        if dropped > 0 {
            tracing::warn!(topic, partition = p, dropped, "ignored the changelog records of an unfinished transaction");
        }
    }
}

/// Where to start reading a partition's changelog and where it ends.
fn plan(consumer: &BaseConsumer, topic: &str, store: &StateStore, p: i32) -> Result<(i64, i64, u64), StageError> {
    let mut from = store.changelog_next(p)?;
    let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
    if from > high {
        // The store is ahead of its changelog: the topic was recreated (or
        // this disk belongs to another cluster). The changelog is the truth.
        tracing::warn!(
            topic,
            partition = p,
            local = from,
            high,
            "local state is ahead of its changelog; rebuilding it"
        );
        store.wipe_partition(p)?;
        from = 0;
    }
    if from < low {
        // Records this store never saw were deleted (retention instead of
        // compaction, or a broker capping partition size like the embedded
        // one): restoring would silently miss keys.
        return Err(StageError::Stop(format!(
            "changelog {topic} partition {p} starts at offset {low} but the local store needs it from {from}: \
             records were deleted (the topic needs cleanup.policy=compact)"
        )));
    }
    Ok((from, high, (from - low).max(0) as u64))
}

fn position_of(consumer: &BaseConsumer, topic: &str, p: i32) -> Result<i64, StageError> {
    let positions = consumer.position()?;
    Ok(match positions.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o,
        _ => 0,
    })
}

/// Appends the local index entries that `batch`'s records imply.
pub(crate) fn add_local_index(batch: &mut Vec<Write>, index_for: &IndexFor<'_>) {
    let index: Vec<Write> =
        batch.iter().filter_map(|(k, v)| index_for(k, v.as_deref())).map(|(k, v)| (k, Some(v))).collect();
    batch.extend(index);
}

fn flush_batch(
    store: &StateStore,
    p: i32,
    batch: &mut Vec<Write>,
    next: i64,
    out: &mut BTreeMap<i32, Restored>,
    index_for: &IndexFor<'_>,
) -> Result<(), StageError> {
    if let Some(r) = out.get_mut(&p) {
        r.applied += batch.len() as u64;
    }
    add_local_index(batch, index_for);
    store.apply(p, batch, Some(next))?;
    batch.clear();
    Ok(())
}
