//! One board's best `n` entries, maintained incrementally.

use std::collections::{BTreeSet, HashMap};

use super::Entry;

/// The best `n` entries of one board, one per player, in O(log n) per update.
///
/// Only the visible top-`n` is stored; the caller owns full totals. That is
/// exact as long as a player's entry never gets worse (points only grow),
/// since an evicted player can only come back by beating the current worst.
#[derive(Clone, Debug)]
pub struct TopN {
    n: usize,
    ranked: BTreeSet<Entry>,
    by_player: HashMap<String, Entry>,
}

impl TopN {
    pub fn new(n: usize) -> Self {
        Self { n, ranked: BTreeSet::new(), by_player: HashMap::new() }
    }

    pub fn capacity(&self) -> usize {
        self.n
    }

    /// Offers a player's new standing; returns true iff the visible top-`n`
    /// changed. A held player's entry is replaced; an outsider enters only by
    /// beating the worst, who is evicted.
    ///
    /// An entry worse than the one already held for that player is ignored:
    /// demoting correctly would need the evicted players we no longer keep.
    pub fn upsert(&mut self, entry: Entry) -> bool {
        if self.n == 0 {
            return false;
        }
        if let Some(held) = self.by_player.get(&entry.player_id) {
            if entry >= *held {
                return false;
            }
            self.ranked.remove(held);
        } else if self.ranked.len() >= self.n {
            match self.ranked.last() {
                Some(worst) if entry < *worst => {
                    let worst = worst.clone();
                    self.ranked.remove(&worst);
                    self.by_player.remove(&worst.player_id);
                }
                _ => return false,
            }
        }
        self.ranked.insert(entry.clone());
        self.by_player.insert(entry.player_id.clone(), entry);
        true
    }

    /// Visible entries, best first.
    pub fn entries(&self) -> Vec<Entry> {
        self.ranked.iter().cloned().collect()
    }

    /// The entry an outsider has to beat once the board is full.
    pub fn worst(&self) -> Option<&Entry> {
        self.ranked.last()
    }

    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    pub fn contains(&self, player_id: &str) -> bool {
        self.by_player.contains_key(player_id)
    }

    pub fn get(&self, player_id: &str) -> Option<&Entry> {
        self.by_player.get(player_id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::e;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fills_up_to_capacity_sorted_best_first() {
        let mut t = TopN::new(3);
        assert!(t.upsert(e("a", 1, 0)));
        assert!(t.upsert(e("b", 3, 0)));
        assert!(t.upsert(e("c", 2, 0)));
        assert_eq!(t.entries(), vec![e("b", 3, 0), e("c", 2, 0), e("a", 1, 0)]);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn outsider_beating_the_worst_evicts_it() {
        let mut t = TopN::new(2);
        t.upsert(e("a", 5, 0));
        t.upsert(e("b", 3, 0));
        assert!(t.upsert(e("c", 4, 0)));
        assert!(!t.contains("b"));
        assert_eq!(t.entries(), vec![e("a", 5, 0), e("c", 4, 0)]);
    }

    #[test]
    fn outsider_not_beating_the_worst_is_ignored() {
        let mut t = TopN::new(2);
        t.upsert(e("a", 5, 0));
        t.upsert(e("b", 3, 1));
        // Same points, later arrival: loses the tie.
        assert!(!t.upsert(e("c", 3, 2)));
        assert!(!t.contains("c"));
    }

    #[test]
    fn held_player_is_replaced_not_duplicated() {
        let mut t = TopN::new(3);
        t.upsert(e("a", 5, 0));
        t.upsert(e("b", 3, 0));
        assert!(t.upsert(e("b", 9, 7)));
        assert_eq!(t.entries(), vec![e("b", 9, 7), e("a", 5, 0)]);
        assert_eq!(t.get("b"), Some(&e("b", 9, 7)));
    }

    #[test]
    fn repeating_the_same_entry_reports_no_change() {
        let mut t = TopN::new(2);
        assert!(t.upsert(e("a", 5, 0)));
        assert!(!t.upsert(e("a", 5, 0)));
    }

    #[test]
    fn worse_entry_for_held_player_is_ignored() {
        let mut t = TopN::new(2);
        t.upsert(e("a", 5, 0));
        assert!(!t.upsert(e("a", 4, 1)));
        assert_eq!(t.entries(), vec![e("a", 5, 0)]);
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut t = TopN::new(0);
        assert!(!t.upsert(e("a", 5, 0)));
        assert!(t.is_empty());
    }

    proptest! {
        /// Arbitrary (even non-monotone) entries: the return value must still
        /// report exactly whether the visible board changed.
        #[test]
        fn upsert_reports_change_exactly_when_entries_change(
            n in 0usize..6,
            entries in proptest::collection::vec((0u8..12, 0u64..8, 0i64..4), 0..120),
        ) {
            let mut t = TopN::new(n);
            for (player, points, reached_at) in entries {
                let before = t.entries();
                let changed = t.upsert(e(&format!("p{player}"), points, reached_at));
                let after = t.entries();
                prop_assert_eq!(changed, before != after);
                prop_assert!(after.len() <= n);
                prop_assert!(after.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(after.iter().all(|x| t.contains(&x.player_id)));
            }
        }
    }
}
