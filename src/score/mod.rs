//! The score stage: per player, tier and board (each prize window, and the
//! lifetime board) event-time sums; per partition and board the top-N,
//! forwarded to the rank stage as changes; chest rewards; watermarks
//! broadcast to every rank partition; late events to the dead-letter topic.
//!
//! State keys (per input partition):
//! - `u/<claim partition u32>` -> highest event time received from that
//!   claim partition (known from the record's lineage);
//! - `\0wm` -> the partition watermark: the minimum of `u/` once every events
//!   partition has been heard from (never decreasing). A minimum and not the
//!   highest time seen, because this partition's input merges 32 claim
//!   partitions that a claim worker consumes in bursts: one claim partition
//!   running ahead must not make the others' events late;
//! - `w/<board 8><hunt u16><tier u16><player>` -> window sum;
//! - `l/<hunt u16><tier u16><player>` -> lifetime sum;
//!   sums are `points u64 BE ++ reached_at i64 BE`, where `reached_at` is the
//!   latest event time that added points (order-independent, so replays and
//!   the verifier agree);
//! - `t/<hunt u16><tier u16><board 8>` -> the partition's top-N (JSON).
//!
//! Window sums and top-N expire once the partition watermark passes the
//! window's end + grace (tombstones go to the changelog too).
//!
//! Events with 0 points change no board. Late means: the event's window had
//! already closed for this partition (watermark >= end + grace). Records
//! without lineage (not written by huntflow's claim stage) count as claim
//! partition 0.

pub mod candidate;

use std::collections::{BTreeMap, HashMap};

use crate::event::{self, EventKind, GameEvent};
use crate::kafka::HEADER_SCHEMA;
use crate::ranking::{Entry, TopN};
use crate::stage::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::topology::Topology;
use crate::windowing::TumblingWindows;
pub use candidate::{Board, Candidate};

/// Forwarded watermarks are floored to this step, so a partition broadcasts
/// at most once per event-time second instead of once per record.
pub const WATERMARK_STEP_MS: i64 = 1_000;
const PURGE_PER_COMMIT: usize = 20_000;
const WM_KEY: &[u8] = b"\0wm";

pub struct ScoreStage {
    topology: Topology,
    windows: TumblingWindows,
    lifetime: bool,
    top_n: usize,
    rank_partitions: i32,
    partitions: i32,
    upstream_partitions: usize,
    /// Cache of `t/` keys; written back in `before_commit`.
    boards: HashMap<(i32, [u8; 4], Board), CachedTop>,
    watermarks: HashMap<i32, i64>,
    /// Cache of `u/` keys per partition.
    upstreams: HashMap<i32, BTreeMap<i32, i64>>,
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
            crate::windowing::prize_windows(topology).map_err(|e| StageError::Fatal(format!("prize window: {e}")))?;
        Ok(Self {
            topology: topology.clone(),
            windows,
            lifetime: spec.windows.lifetime_board,
            top_n: spec.stages.top_n as usize,
            rank_partitions: spec.topics.candidates.partitions,
            partitions: spec.topics.accepted.partitions,
            upstream_partitions: spec.topics.events.partitions.max(1) as usize,
            boards: HashMap::new(),
            watermarks: HashMap::new(),
            upstreams: HashMap::new(),
        })
    }

    fn hunt_tier(&self, e: &GameEvent) -> Option<[u8; 4]> {
        candidate::hunt_tier_id(&self.topology, &e.hunt_id, &e.tier)
    }

    fn watermark(&mut self, state: &PartitionState<'_>) -> Result<i64, StageError> {
        let p = state.partition();
        if let Some(w) = self.watermarks.get(&p) {
            return Ok(*w);
        }
        let w = state.get(WM_KEY)?.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes);
        let w = w.unwrap_or(i64::MIN);
        self.watermarks.insert(p, w);
        Ok(w)
    }

    /// Records `time` from claim partition `upstream`; returns the new
    /// minimum over all claim partitions, once all were heard from.
    fn observe_upstream(
        &mut self,
        state: &mut PartitionState<'_>,
        upstream: i32,
        time: i64,
    ) -> Result<i64, StageError> {
        let p = state.partition();
        if !self.upstreams.contains_key(&p) {
            let mut m = BTreeMap::new();
            for (k, v) in state.scan(b"u/")? {
                if let (Some(up), Some(t)) = (k.get(2..6), v.get(..8)) {
                    let up = i32::from_be_bytes(up.try_into().unwrap_or_default());
                    m.insert(up, i64::from_be_bytes(t.try_into().unwrap_or_default()));
                }
            }
            self.upstreams.insert(p, m);
        }
        let Some(m) = self.upstreams.get_mut(&p) else { return Ok(i64::MIN) };
        let t = m.entry(upstream).or_insert(i64::MIN);
        if time > *t {
            *t = time;
            state.put([b"u/".as_slice(), &upstream.to_be_bytes()].concat(), time.to_be_bytes().to_vec());
        }
        Ok(if m.len() >= self.upstream_partitions { m.values().copied().min().unwrap_or(i64::MIN) } else { i64::MIN })
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
                        .map_err(|err| StageError::Fatal(format!("corrupt top-N state: {err}")))?;
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
        let dead = |code, reason| {
            Ok(Processed { outcome: "dead_lettered", outputs: vec![Output::dead_letter("score", input, code, reason)] })
        };
        let e = match event::decode(input.payload, usize::MAX) {
            Ok(e) => e,
            Err(err) => return dead(err.code(), err.to_string()),
        };
        let Some(ht) = self.hunt_tier(&e) else {
            return dead("unknown_tier", format!("hunt {} has no tier {}", e.hunt_id, e.tier));
        };
        let p = state.partition();
        let wm = self.watermark(state)?;
        let window = self.windows.window_start(e.event_time);
        if self.windows.is_late(e.event_time, wm) {
            let reason = format!(
                "late event: event time {} is in window {window}, closed at watermark {} (end + grace)",
                e.event_time,
                self.windows.closes_at(window)
            );
            return Ok(Processed {
                outcome: "late",
                outputs: vec![Output::dead_letter("score", input, "late_event", reason)],
            });
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

        let upstream = input.upstream.map_or(0, |(_, l)| l.partition);
        let new_wm = wm.max(self.observe_upstream(state, upstream, e.event_time)?);
        if new_wm != wm {
            state.put(WM_KEY.to_vec(), new_wm.to_be_bytes().to_vec());
            self.watermarks.insert(p, new_wm);
            let floor = |w: i64| w.div_euclid(WATERMARK_STEP_MS) * WATERMARK_STEP_MS;
            if wm == i64::MIN || floor(new_wm) != floor(wm) {
                // After this record's candidates: per rank partition, they
                // arrive before the watermark that covers them.
                let mark = Candidate::Watermark { partition: p, partitions: self.partitions, watermark: floor(new_wm) };
                let payload = mark.encode();
                for rp in 0..self.rank_partitions {
                    outputs.push(Output {
                        sink: Sink::Primary,
                        key: b"\0watermark".to_vec(),
                        payload: payload.clone(),
                        partition: Some(rp),
                        headers: vec![(HEADER_SCHEMA, "candidate/v1".into())],
                    });
                }
            }
        }
        Ok(Processed { outcome: "scored", outputs })
    }

    fn before_commit(&mut self, state: &mut PartitionState<'_>) -> Result<(), StageError> {
        let p = state.partition();
        let wm = self.watermark(state)?;
        let windows = self.windows;
        let mut n = 0;
        let expired = state.scan_committed(b"w/", |k, _| {
            n += 1;
            n <= PURGE_PER_COMMIT
                && k.get(2..10)
                    .and_then(Board::from_key_bytes)
                    .is_some_and(|b| matches!(b, Board::Window(s) if windows.is_closed(s, wm)))
        })?;
        let mut closed = std::collections::BTreeSet::new();
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
                    .map_err(|e| StageError::Fatal(format!("encode top-N: {e}")))?;
                state.put(top_key(*ht, *board), bytes);
                cached.dirty = false;
            }
        }
        Ok(())
    }

    fn on_rewind(&mut self) {
        self.boards.clear();
        self.watermarks.clear();
        self.upstreams.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests;
