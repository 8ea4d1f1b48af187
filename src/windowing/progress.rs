//! Event-time progress of one input partition of a stage, from its sources:
//! the writers of the events topic (their heartbeats) or the partitions of
//! the upstream stage (their forwarded watermarks and the event times of
//! their records). Pure logic; the stage runtime persists it in state.
//!
//! - Writers: the minimum over *live* writers. A writer whose latest
//!   heartbeat is more than `writer_timeout` behind the newest heartbeat on
//!   the partition is dead (crashed, scaled down) and is dropped, so it
//!   cannot hold time back forever. Ageing is measured on the log's own
//!   heartbeats, never on the reader's clock, so replays decide the same.
//! - Upstream partitions: the minimum over all of them, once every one has
//!   reported (until then the watermark is unknown).
//!
//! The watermark never goes back.

use std::collections::BTreeMap;

/// Where a partition's time comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Writer(String),
    Upstream(i32),
}

/// How a partition's sources combine.
#[derive(Clone, Copy, Debug)]
pub struct ProgressRules {
    /// Upstream partitions that must all report before time is known.
    pub upstream_partitions: usize,
    pub writer_timeout_ms: i64,
}

/// Latest time per source, and the watermark derived from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    sources: BTreeMap<Source, i64>,
    watermark: i64,
}

impl Default for Progress {
    fn default() -> Self {
        Self { sources: BTreeMap::new(), watermark: i64::MIN }
    }
}

/// What [`Progress::advance`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    /// The new watermark, when it moved forward.
    pub watermark: Option<i64>,
    /// Writers aged out and forgotten (their state can be deleted).
    pub expired: Vec<Source>,
}

impl Progress {
    pub fn new(sources: BTreeMap<Source, i64>, watermark: i64) -> Self {
        Self { sources, watermark }
    }

    /// `i64::MIN` while unknown.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Records `time` from `source`; true when the source's time moved forward.
    pub fn observe(&mut self, source: Source, time: i64) -> bool {
        let t = self.sources.entry(source).or_insert(i64::MIN);
        let moved = time > *t;
        *t = (*t).max(time);
        moved
    }

    /// Ages out dead writers and recomputes the watermark.
    pub fn advance(&mut self, rules: &ProgressRules) -> Advanced {
        let mut out = Advanced::default();
        let newest = self.writer_times().max();
        if let Some(newest) = newest {
            let cutoff = newest.saturating_sub(rules.writer_timeout_ms);
            out.expired = self
                .sources
                .iter()
                .filter(|(s, t)| matches!(s, Source::Writer(_)) && **t < cutoff)
                .map(|(s, _)| s.clone())
                .collect();
            for s in &out.expired {
                self.sources.remove(s);
            }
        }
        let writers = self.writer_times().min();
        let upstream: Vec<i64> =
            self.sources.iter().filter(|(s, _)| matches!(s, Source::Upstream(_))).map(|(_, t)| *t).collect();
        let upstream = (rules.upstream_partitions > 0 && upstream.len() >= rules.upstream_partitions)
            .then(|| upstream.iter().min());
        let candidate = match (writers, upstream.flatten()) {
            (Some(w), Some(u)) => w.min(*u),
            (Some(w), None) => w,
            (None, Some(u)) => *u,
            (None, None) => i64::MIN,
        };
        if candidate > self.watermark {
            self.watermark = candidate;
            out.watermark = Some(candidate);
        }
        out
    }

    fn writer_times(&self) -> impl Iterator<Item = i64> + '_ {
        self.sources.iter().filter(|(s, _)| matches!(s, Source::Writer(_))).map(|(_, t)| *t)
    }

    pub fn sources(&self) -> &BTreeMap<Source, i64> {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RULES: ProgressRules = ProgressRules { upstream_partitions: 2, writer_timeout_ms: 10_000 };

    fn w(name: &str) -> Source {
        Source::Writer(name.into())
    }

    #[test]
    fn upstream_time_waits_for_every_partition_then_takes_the_minimum() {
        let mut p = Progress::default();
        p.observe(Source::Upstream(0), 100);
        assert_eq!(p.advance(&RULES).watermark, None);
        p.observe(Source::Upstream(1), 50);
        assert_eq!(p.advance(&RULES).watermark, Some(50));
        p.observe(Source::Upstream(1), 200);
        assert_eq!(p.advance(&RULES).watermark, Some(100));
        assert!(!p.observe(Source::Upstream(0), 10), "an older time never lowers a source");
        assert_eq!(p.advance(&RULES).watermark, None);
        assert_eq!(p.watermark(), 100);
    }

    #[test]
    fn a_slow_writer_holds_time_back_until_it_is_timeout_behind_the_newest() {
        let mut p = Progress::default();
        p.observe(w("a"), 1_000);
        p.observe(w("b"), 1_000);
        assert_eq!(p.advance(&RULES).watermark, Some(1_000));
        p.observe(w("a"), 9_000);
        assert_eq!(p.advance(&RULES).watermark, None, "b still live: min is b");
        p.observe(w("a"), 11_500);
        let adv = p.advance(&RULES);
        assert_eq!(adv.expired, vec![w("b")]);
        assert_eq!(adv.watermark, Some(11_500));
        p.observe(w("b"), 12_000);
        assert_eq!(p.advance(&RULES).watermark, None, "a restarted writer rejoins without moving time back");
        assert_eq!(p.watermark(), 11_500);
    }

    proptest! {
        /// Reference: the watermark is the running maximum of
        /// min(live writers), recomputed from the whole history.
        #[test]
        fn writer_watermark_matches_a_reference_replay(
            beats in proptest::collection::vec((0usize..3, 0i64..40_000), 1..60),
        ) {
            let mut p = Progress::default();
            let mut latest: BTreeMap<usize, i64> = BTreeMap::new();
            let mut reference = i64::MIN;
            for (writer, time) in beats {
                p.observe(w(&writer.to_string()), time);
                p.advance(&RULES);
                let t = latest.entry(writer).or_insert(i64::MIN);
                *t = (*t).max(time);
                let newest = latest.values().copied().max().unwrap_or(i64::MIN);
                latest.retain(|_, t| *t >= newest - RULES.writer_timeout_ms);
                reference = reference.max(latest.values().copied().min().unwrap_or(i64::MIN));
                prop_assert_eq!(p.watermark(), reference);
            }
        }
    }
}
