//! Exact top-N leaderboards: per-partition maintenance and a global merge.

mod top_n;

pub use top_n::TopN;

use std::cmp::Ordering;
use std::collections::HashMap;

/// A player's standing on one board.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub player_id: String,
    pub points: u64,
    /// Event time at which the player reached `points`.
    pub reached_at: i64,
}

/// Rank order: "smaller" means better. Points descending, then earlier
/// `reached_at` (whoever got there first wins the tie), then `player_id`
/// ascending so the order is total and every replica ranks identically.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .points
            .cmp(&self.points)
            .then_with(|| self.reached_at.cmp(&other.reached_at))
            .then_with(|| self.player_id.cmp(&other.player_id))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Exact global top-`n` from per-partition top-`n` lists, best first.
///
/// Exact because each player's total lives in one partition: anyone in the
/// global top-`n` is necessarily in their own partition's top-`n`. Should a
/// player appear in several lists anyway, only their best entry is kept.
pub fn merge_top_n<'a>(lists: impl IntoIterator<Item = &'a [Entry]>, n: usize) -> Vec<Entry> {
    let mut best: HashMap<&str, &Entry> = HashMap::new();
    for entry in lists.into_iter().flatten() {
        best.entry(entry.player_id.as_str())
            .and_modify(|kept| {
                if entry < *kept {
                    *kept = entry;
                }
            })
            .or_insert(entry);
    }
    let mut merged: Vec<&Entry> = best.into_values().collect();
    merged.sort_unstable();
    merged.into_iter().take(n).cloned().collect()
}

/// Pairs sorted entries with their 1-based rank. The order is total, so
/// there are no shared ranks.
pub fn ranked(entries: &[Entry]) -> impl Iterator<Item = (u32, &Entry)> + '_ {
    entries.iter().enumerate().map(|(i, e)| (u32::try_from(i + 1).unwrap_or(u32::MAX), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn e(player: &str, points: u64, reached_at: i64) -> Entry {
        Entry { player_id: player.to_string(), points, reached_at }
    }

    #[test]
    fn more_points_rank_first() {
        assert!(e("b", 10, 5) < e("a", 9, 0));
    }

    #[test]
    fn earlier_arrival_breaks_point_ties() {
        assert!(e("b", 10, 1) < e("a", 10, 2));
    }

    #[test]
    fn player_id_breaks_remaining_ties() {
        assert!(e("a", 10, 1) < e("b", 10, 1));
    }

    #[test]
    fn merge_picks_global_best_across_partitions() {
        let p0 = vec![e("a", 50, 0), e("b", 10, 0)];
        let p1 = vec![e("c", 40, 0), e("d", 30, 0)];
        let merged = merge_top_n([p0.as_slice(), p1.as_slice()], 3);
        assert_eq!(merged, vec![e("a", 50, 0), e("c", 40, 0), e("d", 30, 0)]);
    }

    #[test]
    fn merge_keeps_only_the_best_entry_of_a_duplicated_player() {
        let p0 = vec![e("a", 10, 0)];
        let p1 = vec![e("a", 20, 5), e("b", 15, 0)];
        let merged = merge_top_n([p0.as_slice(), p1.as_slice()], 5);
        assert_eq!(merged, vec![e("a", 20, 5), e("b", 15, 0)]);
    }

    #[test]
    fn merge_of_nothing_is_empty() {
        assert!(merge_top_n(std::iter::empty(), 3).is_empty());
        assert!(merge_top_n([[e("a", 1, 0)].as_slice()], 0).is_empty());
    }

    #[test]
    fn ranks_start_at_one() {
        let entries = vec![e("a", 3, 0), e("b", 2, 0)];
        let ranks: Vec<(u32, &str)> = ranked(&entries).map(|(r, e)| (r, e.player_id.as_str())).collect();
        assert_eq!(ranks, vec![(1, "a"), (2, "b")]);
    }

    fn partition_of(player: &str, k: usize) -> usize {
        // FNV-1a: deterministic across runs, unlike RandomState.
        let h = player.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        (h % k as u64) as usize
    }

    proptest! {
        #[test]
        fn merged_partition_top_n_equals_global_reference(
            n in 1usize..10,
            k in 1usize..5,
            increments in proptest::collection::vec((0u8..40, 0u64..5, -50i64..50), 0..300),
        ) {
            let mut totals: Vec<HashMap<String, (u64, i64)>> = vec![HashMap::new(); k];
            let mut boards: Vec<TopN> = (0..k).map(|_| TopN::new(n)).collect();
            for (player, add, time) in increments {
                let id = format!("p{player}");
                let part = partition_of(&id, k);
                let total = totals[part].entry(id.clone()).or_insert((0, time));
                if add > 0 {
                    *total = (total.0 + add, time);
                }
                let entry = Entry { player_id: id, points: total.0, reached_at: total.1 };
                let before = boards[part].entries();
                let changed = boards[part].upsert(entry);
                prop_assert_eq!(changed, before != boards[part].entries());
            }
            let per_part: Vec<Vec<Entry>> = boards.iter().map(TopN::entries).collect();
            for (board, part_totals) in boards.iter().zip(&totals) {
                prop_assert_eq!(board.len(), n.min(part_totals.len()));
            }
            let merged = merge_top_n(per_part.iter().map(Vec::as_slice), n);

            let mut reference: Vec<Entry> = totals
                .iter()
                .flatten()
                .map(|(id, &(points, reached_at))| Entry { player_id: id.clone(), points, reached_at })
                .collect();
            reference.sort();
            reference.truncate(n);
            prop_assert_eq!(merged, reference);
        }
    }
}
