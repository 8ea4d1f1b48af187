//! Event-time watermark of a stage: the minimum progress over its inputs.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartitionProgress {
    /// Highest event time / reported watermark; `i64::MIN` until known.
    max_ms: i64,
    idle: bool,
}

impl PartitionProgress {
    const UNKNOWN: Self = Self { max_ms: i64::MIN, idle: false };
}

/// Tracks per-input-partition progress and derives the stage watermark.
///
/// The watermark is the minimum over *active* partitions, because any of them
/// may still deliver an event that old. Idle partitions are skipped so a quiet
/// partition cannot stall windows forever; if every partition is idle, the
/// maximum is used since nothing can arrive below what was already seen.
///
/// [`current`](Self::current) takes `&mut self`: it remembers what it last
/// returned and never goes backwards, even when a rebalance adds a partition
/// whose progress is still unknown. Downstream window emission relies on this.
#[derive(Clone, Debug, Default)]
pub struct WatermarkTracker {
    partitions: BTreeMap<i32, PartitionProgress>,
    last: Option<i64>,
}

impl WatermarkTracker {
    /// All partitions start active with unknown progress (`i64::MIN`), so the
    /// watermark holds until each has reported.
    pub fn new(partitions: impl IntoIterator<Item = i32>) -> Self {
        Self { partitions: partitions.into_iter().map(|p| (p, PartitionProgress::UNKNOWN)).collect(), last: None }
    }

    /// Records an event from `partition` (added if unknown) and marks it active.
    pub fn observe(&mut self, partition: i32, event_time_ms: i64) {
        self.bump(partition, event_time_ms);
    }

    /// Records an explicit upstream watermark; a stale report never lowers
    /// the partition's progress.
    pub fn advance(&mut self, partition: i32, watermark: i64) {
        self.bump(partition, watermark);
    }

    fn bump(&mut self, partition: i32, time_ms: i64) {
        let progress = self.partitions.entry(partition).or_insert(PartitionProgress::UNKNOWN);
        progress.max_ms = progress.max_ms.max(time_ms);
        progress.idle = false;
    }

    /// Excludes `partition` from the minimum until it next observes/advances.
    /// Unknown partitions are ignored: there is nothing to exclude.
    pub fn mark_idle(&mut self, partition: i32) {
        if let Some(progress) = self.partitions.get_mut(&partition) {
            progress.idle = true;
        }
    }

    /// Starts tracking `partition` (no-op if already tracked, to keep progress).
    pub fn add_partition(&mut self, partition: i32) {
        self.partitions.entry(partition).or_insert(PartitionProgress::UNKNOWN);
    }

    pub fn remove_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// The watermark: min over active partitions, max over all if all are
    /// idle, `i64::MIN` if none are known; never below a previous result.
    pub fn current(&mut self) -> i64 {
        let now = self.computed().max(self.last.unwrap_or(i64::MIN));
        self.last = Some(now);
        now
    }

    /// What `current` last returned, without advancing; `i64::MIN` initially.
    pub fn last_emitted(&self) -> i64 {
        self.last.unwrap_or(i64::MIN)
    }

    fn computed(&self) -> i64 {
        let active = self.partitions.values().filter(|p| !p.idle).map(|p| p.max_ms).min();
        active.or_else(|| self.partitions.values().map(|p| p.max_ms).max()).unwrap_or(i64::MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_tracker_is_unknown() {
        assert_eq!(WatermarkTracker::new([]).current(), i64::MIN);
    }

    #[test]
    fn watermark_waits_for_every_partition() {
        let mut t = WatermarkTracker::new([0, 1]);
        t.observe(0, 100);
        assert_eq!(t.current(), i64::MIN);
        t.observe(1, 50);
        assert_eq!(t.current(), 50);
        t.observe(1, 200);
        assert_eq!(t.current(), 100);
    }

    #[test]
    fn out_of_order_events_do_not_lower_progress() {
        let mut t = WatermarkTracker::new([0]);
        t.observe(0, 100);
        t.observe(0, 10);
        t.advance(0, 20);
        assert_eq!(t.current(), 100);
    }

    #[test]
    fn idle_partition_does_not_stall_the_watermark() {
        let mut t = WatermarkTracker::new([0, 1]);
        t.observe(0, 100);
        t.mark_idle(1);
        assert_eq!(t.current(), 100);
    }

    #[test]
    fn all_idle_uses_the_maximum() {
        let mut t = WatermarkTracker::new([0, 1]);
        t.observe(0, 100);
        t.observe(1, 40);
        t.mark_idle(0);
        t.mark_idle(1);
        assert_eq!(t.current(), 100);
    }

    #[test]
    fn observing_reactivates_an_idle_partition() {
        let mut t = WatermarkTracker::new([0, 1]);
        t.observe(0, 100);
        t.mark_idle(1);
        assert_eq!(t.current(), 100);
        t.observe(1, 30);
        t.observe(0, 300);
        // Held at 100, not 30: the watermark never goes back.
        assert_eq!(t.current(), 100);
        t.observe(1, 250);
        assert_eq!(t.current(), 250);
    }

    #[test]
    fn added_partition_holds_but_never_lowers_the_watermark() {
        let mut t = WatermarkTracker::new([0]);
        t.observe(0, 100);
        assert_eq!(t.current(), 100);
        t.add_partition(1);
        t.observe(0, 500);
        assert_eq!(t.current(), 100);
        t.advance(1, 400);
        assert_eq!(t.current(), 400);
    }

    #[test]
    fn removing_a_lagging_partition_unblocks_the_watermark() {
        let mut t = WatermarkTracker::new([0, 1]);
        t.observe(0, 100);
        t.observe(1, 10);
        assert_eq!(t.current(), 10);
        t.remove_partition(1);
        assert_eq!(t.current(), 100);
        assert_eq!(t.partitions().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn adding_a_known_partition_keeps_its_progress() {
        let mut t = WatermarkTracker::new([0]);
        t.observe(0, 100);
        t.add_partition(0);
        assert_eq!(t.current(), 100);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Observe(i32, i64),
        Advance(i32, i64),
        Idle(i32),
        Add(i32),
        Remove(i32),
        Current,
    }

    fn op() -> impl Strategy<Value = Op> {
        let p = 0i32..5;
        let t = -1_000i64..1_000;
        prop_oneof![
            3 => (p.clone(), t.clone()).prop_map(|(p, t)| Op::Observe(p, t)),
            2 => (p.clone(), t).prop_map(|(p, t)| Op::Advance(p, t)),
            1 => p.clone().prop_map(Op::Idle),
            1 => p.clone().prop_map(Op::Add),
            1 => p.prop_map(Op::Remove),
            2 => Just(Op::Current),
        ]
    }

    /// Reference: a flat list scanned linearly, as plain as possible.
    struct Model {
        parts: Vec<(i32, i64, bool)>,
        last: i64,
    }

    impl Model {
        fn find(&mut self, p: i32) -> Option<&mut (i32, i64, bool)> {
            self.parts.iter_mut().find(|e| e.0 == p)
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Observe(p, t) | Op::Advance(p, t) => match self.find(p) {
                    Some(e) => {
                        e.1 = e.1.max(t);
                        e.2 = false;
                    }
                    None => self.parts.push((p, t, false)),
                },
                Op::Idle(p) => {
                    if let Some(e) = self.find(p) {
                        e.2 = true;
                    }
                }
                Op::Add(p) => {
                    if self.find(p).is_none() {
                        self.parts.push((p, i64::MIN, false));
                    }
                }
                Op::Remove(p) => self.parts.retain(|e| e.0 != p),
                Op::Current => {}
            }
        }

        fn current(&mut self) -> i64 {
            let mut wm = i64::MIN;
            if !self.parts.is_empty() {
                let active: Vec<i64> = self.parts.iter().filter(|e| !e.2).map(|e| e.1).collect();
                wm = if active.is_empty() {
                    self.parts.iter().map(|e| e.1).fold(i64::MIN, i64::max)
                } else {
                    active.into_iter().fold(i64::MAX, i64::min)
                };
            }
            self.last = self.last.max(wm);
            self.last
        }
    }

    proptest! {
        #[test]
        fn tracker_matches_reference_and_never_decreases(
            initial in proptest::collection::btree_set(0i32..5, 0..4),
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let mut tracker = WatermarkTracker::new(initial.iter().copied());
            let mut model = Model { parts: initial.iter().map(|&p| (p, i64::MIN, false)).collect(), last: i64::MIN };
            let mut previous = i64::MIN;
            for op in &ops {
                match *op {
                    Op::Observe(p, t) => tracker.observe(p, t),
                    Op::Advance(p, t) => tracker.advance(p, t),
                    Op::Idle(p) => tracker.mark_idle(p),
                    Op::Add(p) => tracker.add_partition(p),
                    Op::Remove(p) => tracker.remove_partition(p),
                    Op::Current => {}
                }
                model.apply(op);
                if matches!(op, Op::Current) {
                    let got = tracker.current();
                    prop_assert_eq!(got, model.current());
                    prop_assert!(got >= previous);
                    prop_assert_eq!(tracker.last_emitted(), got);
                    previous = got;
                }
            }
            prop_assert_eq!(tracker.current(), model.current());
        }
    }
}
