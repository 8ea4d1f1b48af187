//! The records the score stage sends the rank stage on the candidates topic,
//! keyed by `<hunt>/<tier>` (the runtime sends watermarks to every partition).
//! JSON, so an operator can read the topic with any console consumer.

use serde::{Deserialize, Serialize};

use crate::topology::{HuntSpec, TierSpec, Topology};

/// Which board of a tier: the lifetime board or one prize window's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Board {
    Lifetime,
    /// Window start, epoch ms.
    Window(i64),
}

impl Board {
    /// Order-preserving 8-byte state key component (lifetime sorts first).
    pub fn key_bytes(self) -> [u8; 8] {
        let v = match self {
            Board::Lifetime => i64::MIN,
            Board::Window(start) => start.max(i64::MIN + 1),
        };
        ((v as u64) ^ (1 << 63)).to_be_bytes()
    }

    pub fn from_key_bytes(b: &[u8]) -> Option<Self> {
        let v = (u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64;
        Some(if v == i64::MIN { Board::Lifetime } else { Board::Window(v) })
    }

    /// `lifetime` or the window start in ms, as in URLs and record keys.
    pub fn label(self) -> String {
        match self {
            Board::Lifetime => "lifetime".into(),
            Board::Window(start) => start.to_string(),
        }
    }

    pub fn parse(label: &str) -> Option<Self> {
        if label == "lifetime" {
            return Some(Board::Lifetime);
        }
        label.parse().ok().map(Board::Window)
    }
}

/// Compact, stable state-key id of a (hunt, tier) of this topology.
pub fn hunt_tier_id(topology: &Topology, hunt_id: &str, tier: &str) -> Option<[u8; 4]> {
    topology.tier_index(hunt_id, tier).map(|_| crate::topology::tier_state_id(hunt_id, tier))
}

/// The hunt and tier specs behind a [`hunt_tier_id`].
pub fn hunt_tier_of<'t>(topology: &'t Topology, ht: &[u8]) -> Option<(&'t HuntSpec, &'t TierSpec)> {
    topology
        .spec()
        .hunts
        .iter()
        .flat_map(|h| h.tiers.iter().map(move |t| (h, t)))
        .find(|(h, t)| crate::topology::tier_state_id(&h.id, &t.name).as_slice() == ht)
}

/// One change from a score partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Candidate {
    /// A player's standing in the partition's top-N of a board.
    Entry { hunt_id: String, tier: String, board: Board, player_id: String, points: u64, reached_at: i64 },
    /// The player left the partition's top-N of a board.
    Evict { hunt_id: String, tier: String, board: Board, player_id: String },
    /// A chest claimed in a prize window, with its reward.
    Chest {
        hunt_id: String,
        tier: String,
        window_start: i64,
        player_id: String,
        chest_key: String,
        event_id: String,
        reward: u64,
    },
}

impl Candidate {
    pub fn record_key(hunt_id: &str, tier: &str) -> Vec<u8> {
        format!("{hunt_id}/{tier}").into_bytes()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn board_key_bytes_preserve_order_and_round_trip(a in any::<i64>(), b in any::<i64>()) {
            let (a, b) = (Board::Window(a.max(i64::MIN + 1)), Board::Window(b.max(i64::MIN + 1)));
            prop_assert_eq!(Board::from_key_bytes(&a.key_bytes()), Some(a));
            prop_assert_eq!(a.cmp(&b), a.key_bytes().cmp(&b.key_bytes()));
            prop_assert!(Board::Lifetime.key_bytes() < a.key_bytes());
        }
    }

    #[test]
    fn candidates_round_trip_as_tagged_json() {
        let c = Candidate::Evict {
            hunt_id: "h".into(),
            tier: "gold".into(),
            board: Board::Lifetime,
            player_id: "p".into(),
        };
        let text = String::from_utf8(c.encode()).unwrap();
        assert!(text.contains("\"type\":\"evict\""), "{text}");
        assert_eq!(Candidate::decode(text.as_bytes()).unwrap(), c);
        assert_eq!(Board::parse("lifetime"), Some(Board::Lifetime));
        assert_eq!(Board::parse(&Board::Window(120_000).label()), Some(Board::Window(120_000)));
        assert_eq!(Board::parse("x"), None);
    }
}
