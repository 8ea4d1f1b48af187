//! The in-memory view behind the query API: the latest snapshot per board,
//! with closed windows dropped after a retention on event time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::rank::Snapshot;
use crate::topology::Topology;

/// Latest snapshot per `<hunt>/<tier>/<board>`; closed windows are dropped
/// once their tier's watermark is `retention` past their close.
#[derive(Clone)]
pub struct Boards {
    inner: Arc<RwLock<View>>,
    /// Window end + grace + retention: the watermark that drops a window.
    keep_after_end_ms: i64,
}

#[derive(Default)]
struct View {
    boards: HashMap<String, Arc<Snapshot>>,
    tiers: HashMap<String, TierView>,
}

/// Per `<hunt>/<tier>`: what decides which windows are kept.
#[derive(Default)]
struct TierView {
    /// Highest watermark any snapshot of the tier carried.
    watermark: Option<i64>,
    /// Held window boards: start -> end.
    windows: BTreeMap<i64, i64>,
}

impl Boards {
    /// A view that keeps closed windows `retention` (event time) past their
    /// close (end + the topology's grace).
    pub fn new(topology: &Topology, retention: Duration) -> Self {
        let grace = topology.spec().windows.prize.grace.as_millis() as i64;
        let keep = grace.saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        Self { inner: Arc::default(), keep_after_end_ms: keep }
    }

    pub fn get(&self, hunt: &str, tier: &str, board: &str) -> Option<Arc<Snapshot>> {
        self.inner.read().ok()?.boards.get(&Snapshot::record_key(hunt, tier, board)).cloned()
    }

    /// Keeps `snap` unless a snapshot with a higher or equal version is held
    /// or its window is past retention (the tier's watermark only grows, so a
    /// dropped window stays dropped, whatever order partitions are read in).
    pub fn offer(&self, snap: Snapshot) {
        let Ok(mut view) = self.inner.write() else { return };
        let tier_key = format!("{}/{}", snap.hunt_id, snap.tier);
        let tier = view.tiers.entry(tier_key.clone()).or_default();
        if let Some(w) = snap.watermark {
            tier.watermark = Some(tier.watermark.map_or(w, |held| held.max(w)));
        }
        if let Some(start) = snap.window_start {
            let end = snap.window_end.unwrap_or(start);
            if self.expired(tier.watermark, end) {
                return;
            }
            tier.windows.insert(start, end);
        }
        let key = Snapshot::record_key(&snap.hunt_id, &snap.tier, &snap.board);
        if view.boards.get(&key).is_none_or(|held| held.version < snap.version) {
            view.boards.insert(key, Arc::new(snap));
        }
        self.evict(&mut view, &tier_key);
    }

    /// A tombstone (null value) for `key` = `<hunt>/<tier>/<board>`: the
    /// board is gone from the compacted topic, so from the view too. (Its
    /// snapshots precede it in the same partition, so none comes after.)
    pub fn tombstone(&self, key: &str) {
        let Ok(mut view) = self.inner.write() else { return };
        view.boards.remove(key);
        let Some((tier_key, board)) = key.rsplit_once('/') else { return };
        let Ok(start) = board.parse::<i64>() else { return };
        if let Some(tier) = view.tiers.get_mut(tier_key) {
            tier.windows.remove(&start);
        }
    }

    fn expired(&self, watermark: Option<i64>, window_end: i64) -> bool {
        watermark.is_some_and(|w| w >= window_end.saturating_add(self.keep_after_end_ms))
    }

    /// Drops the tier's windows its watermark carried past retention.
    fn evict(&self, view: &mut View, tier_key: &str) {
        let Some(tier) = view.tiers.get_mut(tier_key) else { return };
        let expired: Vec<i64> =
            tier.windows.iter().filter(|(_, end)| self.expired(tier.watermark, **end)).map(|(s, _)| *s).collect();
        for start in expired {
            tier.windows.remove(&start);
            view.boards.remove(&format!("{tier_key}/{start}"));
        }
    }

    /// Boards held (every tier, lifetime and windows).
    pub fn len(&self) -> usize {
        self.inner.read().map(|v| v.boards.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::RankedEntry;

    const MIN: i64 = 60_000;

    fn topology() -> Topology {
        Topology::parse(include_str!("../../topology/treasure-hunt.yaml")).expect("shipped topology")
    }

    fn snap(tier: &str, window: Option<i64>, version: i64, watermark: i64) -> Snapshot {
        Snapshot {
            hunt_id: "winter-2026".into(),
            tier: tier.into(),
            board: window.map_or("lifetime".into(), |w| w.to_string()),
            window_start: window,
            window_end: window.map(|w| w + MIN),
            version,
            watermark: Some(watermark),
            closed: window.is_some_and(|w| watermark >= w + MIN + 10_000),
            entries: vec![RankedEntry { rank: 1, player_id: "p1".into(), points: 5, reached_at: 0 }],
        }
    }

    #[test]
    fn closed_windows_are_dropped_once_the_watermark_is_retention_past_their_close() {
        // grace 10 s (shipped), retention 10 min: window [0, 60 s) goes at 670 s.
        let boards = Boards::new(&topology(), Duration::from_secs(600));
        for (i, w) in (0..20).map(|i| i * MIN).enumerate() {
            boards.offer(snap("gold", Some(w), i as i64, w + MIN + 10_000));
        }
        boards.offer(snap("gold", None, 100, 20 * MIN + 10_000));
        // Watermark 1,210 s: windows ending at or before 600 s (starts 0..=540 s) are gone.
        assert!(boards.get("winter-2026", "gold", "0").is_none());
        assert!(boards.get("winter-2026", "gold", &(9 * MIN).to_string()).is_none());
        assert!(boards.get("winter-2026", "gold", &(10 * MIN).to_string()).is_some());
        assert!(boards.get("winter-2026", "gold", "lifetime").is_some(), "lifetime boards are kept");
        assert_eq!(boards.len(), 10 + 1);
        // Another tier is judged by its own watermark.
        boards.offer(snap("bronze", Some(0), 1, MIN + 10_000));
        assert!(boards.get("winter-2026", "bronze", "0").is_some());
    }

    #[test]
    fn a_dropped_window_is_not_resurrected_by_a_replayed_or_late_snapshot() {
        let boards = Boards::new(&topology(), Duration::from_secs(600));
        boards.offer(snap("gold", Some(0), 1, 70_000));
        boards.offer(snap("gold", None, 2, 2_000_000));
        assert!(boards.get("winter-2026", "gold", "0").is_none());
        // A replay with an old watermark, and a late first sighting of an even older window.
        boards.offer(snap("gold", Some(0), 1, 70_000));
        boards.offer(snap("gold", Some(-MIN), 1, 10_000));
        assert!(boards.get("winter-2026", "gold", "0").is_none());
        assert!(boards.get("winter-2026", "gold", &(-MIN).to_string()).is_none());
        assert_eq!(boards.len(), 1);
    }

    #[test]
    fn a_tombstone_removes_only_its_own_board() {
        let boards = Boards::new(&topology(), Duration::from_secs(3_600));
        boards.offer(snap("gold", Some(MIN), 3, 2 * MIN + 10_000));
        boards.tombstone(&format!("winter-2026/gold/{MIN}"));
        boards.tombstone("winter-2026/gold/not-a-window");
        assert!(boards.get("winter-2026", "gold", &MIN.to_string()).is_none());
        assert!(boards.is_empty());
        // Partitions are read in any order: an older window's snapshot read
        // after a newer window's tombstone is still kept within retention.
        boards.offer(snap("gold", Some(0), 1, MIN + 10_000));
        assert!(boards.get("winter-2026", "gold", "0").is_some());
    }
}
