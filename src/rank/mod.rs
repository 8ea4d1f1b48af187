//! The rank stage: merges the per-partition top-N candidates of each board
//! into the exact global top-N, publishes leaderboard snapshots (at most one
//! per board per publish interval), and when the watermark passes a window's
//! end + grace emits one prize batch per (hunt, tier, window).
//!
//! State keys (per candidates partition):
//! - `e/<hunt u16><tier u16><board 8><player>` -> `points u64 ++ reached_at i64`;
//! - `k/<ht 4><window 8><chest key>` -> chest award (JSON);
//! - `o/<ht 4><window 8>` -> window is open (has state, prizes not emitted);
//! - `y/<ht 4><board 8>` -> board changed since its last snapshot;
//! - `t/<ht 4><window 8>` -> window end (i64 BE): a closed window whose
//!   leaderboard key gets a tombstone once the watermark passes its close +
//!   `windows.leaderboard_retention`.
//!
//! A window's state is deleted when it closes. The partition watermark,
//! owned by the runtime, is the minimum over all score partitions' forwarded
//! watermarks; until every one has reported, no window closes.

pub mod output;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::kafka::HEADER_SCHEMA;
use crate::ranking::Entry;
use crate::score::candidate::{hunt_tier_id, hunt_tier_of};
use crate::score::{Board, Candidate};
use crate::stage::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::topology::Topology;
use crate::windowing::TumblingWindows;
pub use output::{chest_award_key, rank_award_key, Award, PrizeBatch, RankedEntry, Snapshot};

type Ht = [u8; 4];

pub struct RankStage {
    topology: Topology,
    windows: TumblingWindows,
    top_n: usize,
    publish_interval: Duration,
    /// Grace + leaderboard retention: a closed window's key is tombstoned
    /// when the watermark reaches its end + this.
    tombstone_after_ms: i64,
    /// Cache of `e/` per board.
    boards: HashMap<(i32, Ht, Board), BoardEntries>,
    /// Wall clock of each board's last snapshot (pacing only; not state).
    published: HashMap<(i32, Ht, Board), Instant>,
}

/// Every candidate of one board, ranked.
#[derive(Default)]
struct BoardEntries {
    ranked: BTreeSet<Entry>,
    by_player: HashMap<String, Entry>,
}

impl BoardEntries {
    fn put(&mut self, entry: Entry) {
        if let Some(old) = self.by_player.insert(entry.player_id.clone(), entry.clone()) {
            self.ranked.remove(&old);
        }
        self.ranked.insert(entry);
    }

    fn remove(&mut self, player_id: &str) {
        if let Some(old) = self.by_player.remove(player_id) {
            self.ranked.remove(&old);
        }
    }
}

fn key(prefix: &[u8], ht: Ht, board: Board, rest: &[u8]) -> Vec<u8> {
    [prefix, &ht, &board.key_bytes(), rest].concat()
}

fn i64_of(b: &[u8]) -> Option<i64> {
    b.get(..8)?.try_into().ok().map(i64::from_be_bytes)
}

impl RankStage {
    pub fn new(topology: &Topology) -> Result<Self, StageError> {
        let spec = topology.spec();
        let windows =
            crate::windowing::prize_windows(topology).map_err(|e| StageError::Stop(format!("prize window: {e}")))?;
        Ok(Self {
            topology: topology.clone(),
            windows,
            top_n: spec.stages.top_n as usize,
            publish_interval: spec.stages.leaderboard_publish_interval.0,
            tombstone_after_ms: windows
                .grace_ms
                .max(0)
                .saturating_add(spec.windows.leaderboard_retention.as_millis() as i64),
            boards: HashMap::new(),
            published: HashMap::new(),
        })
    }

    fn board<'s>(
        &'s mut self,
        state: &PartitionState<'_>,
        ht: Ht,
        board: Board,
    ) -> Result<&'s mut BoardEntries, StageError> {
        let p = state.partition();
        if !self.boards.contains_key(&(p, ht, board)) {
            let mut entries = BoardEntries::default();
            let prefix = key(b"e/", ht, board, b"");
            for (k, v) in state.scan(&prefix)? {
                let player = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                if let (Some(points), Some(reached_at)) = (v.get(..8), v.get(8..16).and_then(i64_of)) {
                    let points = u64::from_be_bytes(points.try_into().unwrap_or_default());
                    entries.put(Entry { player_id: player, points, reached_at });
                }
            }
            self.boards.insert((p, ht, board), entries);
        }
        self.boards.get_mut(&(p, ht, board)).ok_or_else(|| StageError::Stop("board cache".into()))
    }

    /// The partition watermark, once known.
    fn watermark(state: &PartitionState<'_>) -> Option<i64> {
        Some(state.watermark()).filter(|w| *w != i64::MIN)
    }

    fn snapshot(
        &mut self,
        state: &PartitionState<'_>,
        ht: Ht,
        board: Board,
        version: i64,
        closed: bool,
    ) -> Result<Output, StageError> {
        let watermark = Self::watermark(state);
        let (hunt_id, tier) = self.names(ht)?;
        let top_n = self.top_n;
        let entries = self.board(state, ht, board)?;
        let entries: Vec<RankedEntry> = entries
            .ranked
            .iter()
            .take(top_n)
            .enumerate()
            .map(|(i, e)| RankedEntry {
                rank: i as u32 + 1,
                player_id: e.player_id.clone(),
                points: e.points,
                reached_at: e.reached_at,
            })
            .collect();
        let (window_start, window_end) = match board {
            Board::Lifetime => (None, None),
            Board::Window(s) => (Some(s), Some(self.windows.window_end(s))),
        };
        let snap = Snapshot {
            board: board.label(),
            window_start,
            window_end,
            version,
            watermark,
            closed,
            entries,
            hunt_id,
            tier,
        };
        Ok(Output {
            sink: Sink::Primary,
            key: Snapshot::record_key(&snap.hunt_id, &snap.tier, &snap.board).into_bytes(),
            payload: serde_json::to_vec(&snap).map_err(|e| StageError::Poison(format!("encode snapshot: {e}")))?,
            partition: None,
            headers: vec![(HEADER_SCHEMA, "leaderboard/v1".into())],
        })
    }

    fn names(&self, ht: Ht) -> Result<(String, String), StageError> {
        hunt_tier_of(&self.topology, &ht)
            .map(|(h, t)| (h.id.clone(), t.name.clone()))
            .ok_or_else(|| StageError::Stop("state names an unknown hunt or tier".into()))
    }

    /// Prize batch and final snapshot of one window; drops its state.
    fn close(
        &mut self,
        state: &mut PartitionState<'_>,
        ht: Ht,
        start: i64,
        version: i64,
        out: &mut Vec<Output>,
    ) -> Result<(), StageError> {
        let board = Board::Window(start);
        let (hunt, tier) = hunt_tier_of(&self.topology, &ht)
            .map(|(h, t)| (h.clone(), t.clone()))
            .ok_or_else(|| StageError::Stop("state names an unknown hunt or tier".into()))?;
        let final_snapshot = self.snapshot(state, ht, board, version, true)?;
        let mut awards = Vec::new();
        let top_n = self.top_n;
        let entries = self.board(state, ht, board)?;
        for (i, e) in entries.ranked.iter().take(top_n).enumerate() {
            let rank = i as u32 + 1;
            if let Some(r) = tier.rank_rewards.iter().find(|r| r.from <= rank && rank <= r.to) {
                awards.push(Award {
                    idempotency_key: rank_award_key(&hunt.id, &tier.name, start, rank, &e.player_id),
                    kind: "rank".into(),
                    player_id: e.player_id.clone(),
                    amount: r.reward,
                    rank: Some(rank),
                    chest_key: None,
                    event_id: None,
                });
            }
        }
        let players: Vec<String> = entries.by_player.keys().cloned().collect();
        for player in players {
            state.delete(key(b"e/", ht, board, player.as_bytes()));
        }
        let chest_prefix = key(b"k/", ht, board, b"");
        for (k, v) in state.scan(&chest_prefix)? {
            let chest: Candidate = Candidate::decode(&v).map_err(|e| StageError::Stop(format!("chest state: {e}")))?;
            if let Candidate::Chest { player_id, chest_key, event_id, reward, .. } = chest {
                awards.push(Award {
                    idempotency_key: chest_award_key(&hunt.id, &chest_key),
                    kind: "chest".into(),
                    player_id,
                    amount: reward,
                    rank: None,
                    chest_key: Some(chest_key),
                    event_id: Some(event_id),
                });
            }
            state.delete(k);
        }
        state.delete(key(b"o/", ht, board, b""));
        state.delete(key(b"y/", ht, board, b""));
        state.put(key(b"t/", ht, board, b""), self.windows.window_end(start).to_be_bytes().to_vec());
        let p = state.partition();
        self.boards.remove(&(p, ht, board));
        self.published.remove(&(p, ht, board));

        let closes_at = self.windows.closes_at(start).to_string();
        let base = PrizeBatch {
            batch_id: format!("{}/{}/{start}", hunt.id, tier.name),
            hunt_id: hunt.id.clone(),
            tier: tier.name.clone(),
            currency: hunt.currency.clone(),
            window_start: start,
            window_end: self.windows.window_end(start),
            part: 1,
            parts: 1,
            awards: Vec::new(),
        };
        for batch in output::split_batch(base, awards, output::MAX_BATCH_BYTES) {
            out.push(Output {
                sink: Sink::Secondary,
                key: batch.batch_id.clone().into_bytes(),
                payload: serde_json::to_vec(&batch).map_err(|e| StageError::Poison(format!("encode batch: {e}")))?,
                partition: None,
                headers: vec![
                    (HEADER_SCHEMA, "prize-batch/v1".into()),
                    (crate::stage::HEADER_WINDOW_CLOSES_AT, closes_at.clone()),
                ],
            });
        }
        out.push(final_snapshot);
        Ok(())
    }

    fn apply(
        &mut self,
        state: &mut PartitionState<'_>,
        input: &Input<'_>,
        c: Candidate,
    ) -> Result<Processed, StageError> {
        let topology = self.topology.clone();
        let ht_of = |hunt: &str, tier: &str| hunt_tier_id(&topology, hunt, tier);
        match c {
            Candidate::Entry { hunt_id, tier, board, player_id, points, reached_at } => {
                let Some(ht) = ht_of(&hunt_id, &tier) else { return unknown(input, &hunt_id, &tier) };
                if self.is_closed(state, board)? {
                    return after_close(input, board);
                }
                let value = [points.to_be_bytes(), reached_at.to_be_bytes()].concat();
                state.put(key(b"e/", ht, board, player_id.as_bytes()), value);
                self.board(state, ht, board)?.put(Entry { player_id, points, reached_at });
                self.touch(state, ht, board);
            }
            Candidate::Evict { hunt_id, tier, board, player_id } => {
                let Some(ht) = ht_of(&hunt_id, &tier) else { return unknown(input, &hunt_id, &tier) };
                if self.is_closed(state, board)? {
                    return after_close(input, board);
                }
                state.delete(key(b"e/", ht, board, player_id.as_bytes()));
                self.board(state, ht, board)?.remove(&player_id);
                self.touch(state, ht, board);
            }
            Candidate::Chest { ref hunt_id, ref tier, window_start, ref chest_key, .. } => {
                let Some(ht) = ht_of(hunt_id, tier) else { return unknown(input, hunt_id, tier) };
                let board = Board::Window(window_start);
                if self.is_closed(state, board)? {
                    return after_close(input, board);
                }
                state.put(key(b"k/", ht, board, chest_key.as_bytes()), c.encode());
                state.put(key(b"o/", ht, board, b""), Vec::new());
            }
        }
        Ok(Processed::new("merged", Vec::new()))
    }

    /// Tombstones (empty payload: a null value) for the leaderboard keys of
    /// closed windows the watermark carried past retention.
    fn tombstones(&self, state: &mut PartitionState<'_>, now: i64, out: &mut Vec<Output>) -> Result<(), StageError> {
        for (k, v) in state.scan(b"t/")? {
            let (Some(ht), Some(board), Some(end)) = (
                k.get(2..6).and_then(|b| Ht::try_from(b).ok()),
                k.get(6..14).and_then(Board::from_key_bytes),
                i64_of(&v),
            ) else {
                continue;
            };
            if now < end.saturating_add(self.tombstone_after_ms) {
                continue;
            }
            let (hunt_id, tier) = self.names(ht)?;
            out.push(Output {
                sink: Sink::Primary,
                key: Snapshot::record_key(&hunt_id, &tier, &board.label()).into_bytes(),
                payload: Vec::new(),
                partition: None,
                headers: vec![(HEADER_SCHEMA, "leaderboard/v1".into())],
            });
            state.delete(k);
        }
        Ok(())
    }

    fn is_closed(&self, state: &PartitionState<'_>, board: Board) -> Result<bool, StageError> {
        Ok(match board {
            Board::Window(s) => Self::watermark(state).is_some_and(|w| self.windows.is_closed(s, w)),
            Board::Lifetime => false,
        })
    }

    fn touch(&mut self, state: &mut PartitionState<'_>, ht: Ht, board: Board) {
        if let Board::Window(_) = board {
            state.put(key(b"o/", ht, board, b""), Vec::new());
        }
        state.put(key(b"y/", ht, board, b""), Vec::new());
    }
}

fn unknown(input: &Input<'_>, hunt: &str, tier: &str) -> Result<Processed, StageError> {
    let reason = format!("hunt {hunt} has no tier {tier} in this topology");
    Ok(Processed::new("dead_lettered", vec![Output::dead_letter("rank", input, "unknown_tier", reason)]))
}

/// Cannot happen while score orders candidates before watermarks; kept
/// visible rather than silently merged into a batch already paid.
fn after_close(input: &Input<'_>, board: Board) -> Result<Processed, StageError> {
    let reason = format!("candidate for window {} arrived after it closed", board.label());
    Ok(Processed::new("after_close", vec![Output::dead_letter("rank", input, "candidate_after_close", reason)]))
}

impl StageLogic for RankStage {
    fn name(&self) -> &'static str {
        "rank"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        match Candidate::decode(input.payload) {
            Ok(c) => self.apply(state, input, c),
            Err(e) => Ok(Processed::new(
                "dead_lettered",
                vec![Output::dead_letter("rank", input, "bad_candidate", e.to_string())],
            )),
        }
    }

    fn tick(&mut self, state: &mut PartitionState<'_>, now: Instant) -> Result<Vec<Output>, StageError> {
        let p = state.partition();
        let dirty = state.scan(b"y/")?;
        let mut out = Vec::new();
        if dirty.is_empty() {
            return Ok(out);
        }
        let version = state.position()?;
        for k in dirty.keys() {
            let (Some(ht), Some(board)) =
                (k.get(2..6).and_then(|b| Ht::try_from(b).ok()), k.get(6..14).and_then(Board::from_key_bytes))
            else {
                continue;
            };
            if self.published.get(&(p, ht, board)).is_some_and(|t| now.duration_since(*t) < self.publish_interval) {
                continue;
            }
            out.push(self.snapshot(state, ht, board, version, false)?);
            state.delete(k.clone());
            self.published.insert((p, ht, board), now);
        }
        Ok(out)
    }

    fn on_watermark(&mut self, state: &mut PartitionState<'_>, watermark: i64) -> Result<Vec<Output>, StageError> {
        let windows = self.windows;
        let due: Vec<(Ht, i64)> = state
            .scan(b"o/")?
            .keys()
            .filter_map(|k| {
                let ht: Ht = k.get(2..6)?.try_into().ok()?;
                match Board::from_key_bytes(k.get(6..14)?)? {
                    Board::Window(s) if windows.is_closed(s, watermark) => Some((ht, s)),
                    _ => None,
                }
            })
            .collect();
        let version = state.position()?;
        let mut outputs = Vec::new();
        for (ht, start) in due {
            self.close(state, ht, start, version, &mut outputs)?;
        }
        self.tombstones(state, watermark, &mut outputs)?;
        Ok(outputs)
    }

    fn on_rewind(&mut self) {
        self.boards.clear();
    }
}

#[cfg(test)]
mod tests;
