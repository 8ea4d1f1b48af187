//! The score stage: per player, tier and board (each prize window, and the
//! lifetime board) event-time sums; per partition and board the top-N,
//! forwarded to the rank stage as changes; chest rewards; late events to
//! the dead-letter topic. The runtime owns the watermark: the minimum over
//! claim partitions of the latest time each sent (event times reported here,
//! and the watermarks claim forwards from the writers' heartbeats), and it
//! forwards it to every rank partition.
//!
//! State keys (per input partition):
//! - `w/<board 8><tier id 4><player>` -> window sum (tier id: a digest of
//!   hunt and tier names, stable across topology edits);
//! - `l/<tier id 4><player>` -> lifetime sum;
//!   sums are `points u64 BE ++ reached_at i64 BE`, where `reached_at` is the
//!   latest event time that added points (order-independent, so replays and
//!   the verifier agree);
//! - `t/<tier id 4><board 8>` -> the partition's top-N (JSON).
//!
//! Window sums and top-N expire once the partition watermark passes the
//! window's end + grace (tombstones go to the changelog too).
//!
//! Events with 0 points change no board. Late means: the event's window had
//! already closed for this partition (watermark >= end + grace). Records
//! without lineage (not written by huntflow's claim stage) count as claim
//! partition 0.

pub mod candidate;

use std::collections::HashMap;

use crate::event::{self, EventKind, GameEvent};
use crate::kafka::HEADER_SCHEMA;
use crate::ranking::{Entry, TopN};
use crate::stage::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::topology::Topology;
use crate::windowing::TumblingWindows;
pub use candidate::{Board, Candidate};

const PURGE_PER_COMMIT: usize = 20_000;

pub struct ScoreStage {
    topology: Topology,
    windows: TumblingWindows,
    lifetime: bool,
    top_n: usize,
    /// Cache of `t/` keys; written back in `before_commit`.
    boards: HashMap<(i32, [u8; 4], Board), CachedTop>,
    /// Per partition, where the next expiry scan of `w/` starts: just after
    /// the last window sum it purged. Closed windows get no new sums (their
    /// events are late), so nothing is missed, and the scan does not step
    /// over the tombstones of every purged sum again (a profile showed that
    /// dominating score's per-record cost).
    purged_to: HashMap<i32, Vec<u8>>,
}

struct CachedTop {
    top: TopN,
    dirty: bool,
}

fn sum_value(points: u64, reached_at: i64) -> Vec<u8> {
    let mut v = points.to_be_bytes().to_vec();
    v.extend_from_slice(&reached_at.to_be_bytes());
    v
}

fn parse_sum(b: &[u8]) -> Option<(u64, i64)> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?), i64::from_be_bytes(b.get(8..16)?.try_into().ok()?)))
}

fn top_key(ht: [u8; 4], board: Board) -> Vec<u8> {
    [b"t/".as_slice(), &ht, &board.key_bytes()].concat()
}

impl ScoreStage {
    pub fn new(topology: &Topology) -> Result<Self, StageError> {
        let spec = topology.spec();
        let windows =
            crate::windowing::prize_windows(topology).map_err(|e| StageError::Stop(format!("prize window: {e}")))?;
        Ok(Self {
            topology: topology.clone(),
            windows,
            lifetime: spec.windows.lifetime_board,
            top_n: spec.stages.top_n as usize,
            boards: HashMap::new(),
            purged_to: HashMap::new(),
        })
    }

    fn hunt_tier(&self, e: &GameEvent) -> Option<[u8; 4]> {
        candidate::hunt_tier_id(&self.topology, &e.hunt_id, &e.tier)
    }

    /// Adds the event to one board's sum and offers the new standing to the
    /// partition's top-N; returns the candidate changes to forward.
    fn add_to_board(
        &mut self,
        state: &mut PartitionState<'_>,
        e: &GameEvent,
        ht: [u8; 4],
        board: Board,
        out: &mut Vec<Output>,
    ) -> Result<(), StageError> {
        let sum_key = match board {
            Board::Lifetime => [b"l/".as_slice(), &ht, e.player_id.as_bytes()].concat(),
            Board::Window(_) => [b"w/".as_slice(), &board.key_bytes(), &ht, e.player_id.as_bytes()].concat(),
        };
        let (points, reached) = state.get(&sum_key)?.as_deref().and_then(parse_sum).unwrap_or((0, i64::MIN));
        let entry = Entry {
            player_id: e.player_id.clone(),
            points: points.saturating_add(e.points),
            reached_at: reached.max(e.event_time),
        };
        state.put(sum_key, sum_value(entry.points, entry.reached_at));

        let p = state.partition();
        let cached = match self.boards.entry((p, ht, board)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut top = TopN::new(self.top_n);
                if let Some(bytes) = state.get(&top_key(ht, board))? {
                    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
                        .map_err(|err| StageError::Stop(format!("corrupt top-N state: {err}")))?;
                    for en in entries {
                        top.upsert(en);
                    }
                }
                v.insert(CachedTop { top, dirty: false })
            }
        };
        let evicted = match cached.top.worst() {
            Some(w) if cached.top.len() >= self.top_n && !cached.top.contains(&e.player_id) => Some(w.clone()),
            _ => None,
        };
        if !cached.top.upsert(entry.clone()) {
            return Ok(());
        }
        cached.dirty = true;
        let key = Candidate::record_key(&e.hunt_id, &e.tier);
        let candidate = |c: Candidate| Output {
            sink: Sink::Primary,
            key: key.clone(),
            payload: c.encode(),
            partition: None,
            headers: vec![(HEADER_SCHEMA, "candidate/v1".into())],
        };
        if let Some(gone) = evicted.filter(|w| !cached.top.contains(&w.player_id)) {
            out.push(candidate(Candidate::Evict {
                hunt_id: e.hunt_id.clone(),
                tier: e.tier.clone(),
                board,
                player_id: gone.player_id,
            }));
        }
        out.push(candidate(Candidate::Entry {
            hunt_id: e.hunt_id.clone(),
            tier: e.tier.clone(),
            board,
            player_id: entry.player_id,
            points: entry.points,
            reached_at: entry.reached_at,
        }));
        Ok(())
    }
}

impl StageLogic for ScoreStage {
    fn name(&self) -> &'static str {
        "score"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        let dead =
            |code, reason| Ok(Processed::new("dead_lettered", vec![Output::dead_letter("score", input, code, reason)]));
        let e = match event::decode(input.payload, usize::MAX) {
            Ok(e) => e,
            Err(err) => return dead(err.code(), err.to_string()),
        };
        let Some(ht) = self.hunt_tier(&e) else {
            return dead("unknown_tier", format!("hunt {} has no tier {}", e.hunt_id, e.tier));
        };
        let wm = state.watermark();
        let window = self.windows.window_start(e.event_time);
        if self.windows.is_late(e.event_time, wm) {
            let reason = format!(
                "late event: event time {} is in window {window}, closed at watermark {} (end + grace)",
                e.event_time,
                self.windows.closes_at(window)
            );
            return Ok(Processed::new("late", vec![Output::dead_letter("score", input, "late_event", reason)]));
        }

        let mut outputs = Vec::new();
        if e.points > 0 {
            self.add_to_board(state, &e, ht, Board::Window(window), &mut outputs)?;
            if self.lifetime {
                self.add_to_board(state, &e, ht, Board::Lifetime, &mut outputs)?;
            }
        }
        if e.kind == EventKind::ChestOpened {
            let reward = self
                .topology
                .hunt(&e.hunt_id)
                .and_then(|h| h.tiers.iter().find(|t| t.name == e.tier))
                .map_or(0, |t| t.chest_reward);
            outputs.push(Output {
                sink: Sink::Primary,
                key: Candidate::record_key(&e.hunt_id, &e.tier),
                payload: Candidate::Chest {
                    hunt_id: e.hunt_id.clone(),
                    tier: e.tier.clone(),
                    window_start: window,
                    player_id: e.player_id.clone(),
                    chest_key: e.chest_key.clone().unwrap_or_default(),
                    event_id: e.event_id.clone(),
                    reward,
                }
                .encode(),
                partition: None,
                headers: vec![(HEADER_SCHEMA, "candidate/v1".into())],
            });
        }

        Ok(Processed { outcome: "scored", outputs, event_time: Some(e.event_time) })
    }

    fn before_commit(&mut self, state: &mut PartitionState<'_>) -> Result<(), StageError> {
        let p = state.partition();
        let wm = state.watermark();
        let windows = self.windows;
        let mut n = 0;
        let from = self.purged_to.get(&p).cloned().unwrap_or_else(|| b"w/".to_vec());
        let expired = state.scan_committed_from(b"w/", &from, |k, _| {
            n += 1;
            n <= PURGE_PER_COMMIT
                && k.get(2..10)
                    .and_then(Board::from_key_bytes)
                    .is_some_and(|b| matches!(b, Board::Window(s) if windows.is_closed(s, wm)))
        })?;
        let mut closed = std::collections::BTreeSet::new();
        if let Some((last, _)) = expired.last() {
            // The smallest key after `last`.
            self.purged_to.insert(p, [last.as_slice(), &[0]].concat());
        }
        for (k, _) in expired {
            if let (Some(board), Some(ht)) = (k.get(2..10).and_then(Board::from_key_bytes), k.get(10..14)) {
                let mut h = [0; 4];
                h.copy_from_slice(ht);
                closed.insert((h, board));
            }
            state.delete(k);
        }
        for (ht, board) in closed {
            state.delete(top_key(ht, board));
            self.boards.remove(&(p, ht, board));
        }
        for ((bp, ht, board), cached) in self.boards.iter_mut() {
            if *bp == p && cached.dirty {
                let bytes = serde_json::to_vec(&cached.top.entries())
                    .map_err(|e| StageError::Poison(format!("encode top-N: {e}")))?;
                state.put(top_key(*ht, *board), bytes);
                cached.dirty = false;
            }
        }
        Ok(())
    }

    fn on_rewind(&mut self) {
        self.boards.clear();
        self.purged_to.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests;
