//! The bridge's heartbeat time: the minimum arrival clock over the shards it
//! reads, so windows close when Kinesis goes quiet, as they do behind ingest.
//!
//! A shard's clock (see [`super::reader::ShardBatch::clock`]) is a lower
//! bound on the arrival time of its records not yet copied. Kinesis keeps a
//! shard's records in arrival order, so once the records before a clock are
//! in a transaction, a heartbeat at the minimum clock of every shard being
//! read can follow them: nothing this writer copies later arrived before it.
//!
//! - A shard being read without a clock yet (just started) holds the
//!   heartbeat back: its backlog may be older than every other shard's.
//! - A child waiting for its parent is not counted: its records arrived after
//!   the split, so after everything of the parent, which is counted (or
//!   belongs to another instance, whose heartbeats hold the time back).
//! - Behind a backlog the clock is the backlog's arrival time, so a bridge
//!   catching up after downtime does not make its own records late.

use std::collections::{BTreeMap, BTreeSet};

/// Shard clocks and the heartbeat they allow.
#[derive(Debug, Default)]
pub struct ShardClocks {
    clocks: BTreeMap<String, i64>,
    sent: Option<i64>,
}

impl ShardClocks {
    /// Records `shard`'s clock from a batch handed to the committer.
    pub fn observe(&mut self, shard: &str, clock: i64) {
        let c = self.clocks.entry(shard.to_owned()).or_insert(clock);
        *c = (*c).max(clock);
    }

    /// Forgets the clocks (a new epoch re-reads from the checkpoints).
    pub fn reset(&mut self) {
        self.clocks.clear();
    }

    /// The heartbeat due now for the shards being read (`active`), if it is
    /// known and later than the last one sent.
    pub fn due(&self, active: &BTreeSet<String>) -> Option<i64> {
        if active.is_empty() {
            return None;
        }
        let mut min = i64::MAX;
        for shard in active {
            min = min.min(*self.clocks.get(shard)?);
        }
        (self.sent.is_none_or(|s| min > s)).then_some(min)
    }

    /// A heartbeat at `time` was committed.
    pub fn sent(&mut self, time: i64) {
        self.sent = Some(self.sent.map_or(time, |s| s.max(time)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(shards: &[&str]) -> BTreeSet<String> {
        shards.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_heartbeat_is_the_slowest_read_shards_clock_and_never_repeats() {
        let mut c = ShardClocks::default();
        c.observe("a", 1_000);
        assert_eq!(c.due(&active(&["a", "b"])), None, "b has not reported yet");
        c.observe("b", 400);
        assert_eq!(c.due(&active(&["a", "b"])), Some(400));
        c.sent(400);
        assert_eq!(c.due(&active(&["a", "b"])), None, "nothing new");
        c.observe("b", 300);
        assert_eq!(c.due(&active(&["a", "b"])), None, "a clock never goes back");
        c.observe("b", 2_000);
        assert_eq!(c.due(&active(&["a", "b"])), Some(1_000));
        // b finished: only a counts.
        assert_eq!(c.due(&active(&["a"])), Some(1_000));
        assert_eq!(c.due(&active(&[])), None, "no shard read, no promise");
    }

    #[test]
    fn after_a_reset_every_shard_must_report_again() {
        let mut c = ShardClocks::default();
        c.observe("a", 1_000);
        c.sent(1_000);
        c.reset();
        assert_eq!(c.due(&active(&["a"])), None);
        c.observe("a", 900);
        assert_eq!(c.due(&active(&["a"])), None, "not before what was already promised");
        c.observe("a", 1_100);
        assert_eq!(c.due(&active(&["a"])), Some(1_100));
    }
}
