//! The claim stage: drops retried `event_id`s, lets the first claim of a
//! chest win (in log order of its partition), and re-keys accepted events by
//! player for the score stage.
//!
//! State keys (per input partition; see `state` for the layout):
//! - `d/<event_id>` -> event time (i64 BE): seen events, for dedup;
//! - `e/<event time BE><event_id>` -> empty: expiry index of `d/`;
//! - `c/<chest_key>` -> winning event id: chest claims, kept for the hunt;
//! - `\0maxt` -> highest event time seen: the stage's event-time clock.
//!
//! Dedup expires on event time, never wall clock, so a replay decides
//! exactly as the first run did.

use crate::event::{self, EventKind};
use crate::kafka::HEADER_SCHEMA;
use crate::stage::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::topology::Topology;

/// Expired dedup entries removed per commit, so one commit stays short.
const PURGE_PER_COMMIT: usize = 10_000;

pub struct ClaimStage {
    topology: Topology,
    ttl_ms: i64,
    max_event_bytes: usize,
}

impl ClaimStage {
    pub fn new(topology: &Topology) -> Self {
        let spec = topology.spec();
        Self {
            topology: topology.clone(),
            ttl_ms: spec.stages.dedup_ttl.as_millis() as i64,
            // Records on the events topic were produced by anyone; be as
            // strict as ingest, with room for re-encoding.
            max_event_bytes: spec.ingest.max_event_bytes.max(1 << 16),
        }
    }
}

fn i64_of(b: &[u8]) -> Option<i64> {
    b.try_into().ok().map(i64::from_be_bytes)
}

fn dead_letter(input: &Input<'_>, code: &'static str, reason: String) -> Output {
    Output::dead_letter("claim", input, code, reason)
}

impl StageLogic for ClaimStage {
    fn name(&self) -> &'static str {
        "claim"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        let event = match event::decode(input.payload, self.max_event_bytes) {
            Ok(e) => e,
            Err(err) => {
                return Ok(Processed::new("dead_lettered", vec![dead_letter(input, err.code(), err.to_string())]))
            }
        };
        if self.topology.tier_index(&event.hunt_id, &event.tier).is_none() {
            let err = if self.topology.hunt(&event.hunt_id).is_none() {
                event::DecodeError::UnknownHunt(event.hunt_id.clone())
            } else {
                event::DecodeError::UnknownTier { hunt: event.hunt_id.clone(), tier: event.tier.clone() }
            };
            return Ok(Processed::new("dead_lettered", vec![dead_letter(input, err.code(), err.to_string())]));
        }

        let max_time = state.get(b"\0maxt")?.as_deref().and_then(i64_of).unwrap_or(i64::MIN).max(event.event_time);
        state.put(b"\0maxt".to_vec(), max_time.to_be_bytes().to_vec());

        let dedup_key = [b"d/".as_slice(), event.event_id.as_bytes()].concat();
        if let Some(seen_at) = state.get(&dedup_key)?.as_deref().and_then(i64_of) {
            // Still within the TTL (on the event-time clock): a retry.
            if seen_at >= max_time.saturating_sub(self.ttl_ms) {
                return Ok(Processed::new("duplicate", vec![]));
            }
        }
        state.put(dedup_key, event.event_time.to_be_bytes().to_vec());
        state.put([b"e/".as_slice(), &event.event_time.to_be_bytes(), event.event_id.as_bytes()].concat(), Vec::new());

        if event.kind == EventKind::ChestOpened {
            let chest = event.chest_key.as_deref().unwrap_or_default();
            let claim_key = [b"c/".as_slice(), chest.as_bytes()].concat();
            if let Some(winner) = state.get(&claim_key)? {
                let reason = format!("chest {chest} was already claimed by event {}", String::from_utf8_lossy(&winner));
                return Ok(Processed::new("chest_rejected", vec![dead_letter(input, "chest_already_claimed", reason)]));
            }
            state.put(claim_key, event.event_id.as_bytes().to_vec());
        }

        let out = Output {
            sink: Sink::Primary,
            key: event.player_id.as_bytes().to_vec(),
            payload: event.encode(),
            partition: None,
            headers: vec![(HEADER_SCHEMA, "game-event/v1".into())],
        };
        Ok(Processed::new("accepted", vec![out]))
    }

    fn before_commit(&mut self, state: &mut PartitionState<'_>) -> Result<(), StageError> {
        let Some(max_time) = state.get(b"\0maxt")?.as_deref().and_then(i64_of) else { return Ok(()) };
        let cutoff = max_time.saturating_sub(self.ttl_ms);
        let mut n = 0;
        let expired = state.scan_committed(b"e/", |k, _| {
            n += 1;
            n <= PURGE_PER_COMMIT && k.get(2..10).and_then(i64_of).is_some_and(|t| t < cutoff)
        })?;
        for (k, _) in expired {
            let event_id = &k[10..];
            let dedup_key = [b"d/".as_slice(), event_id].concat();
            // Only drop the dedup entry if it is this (old) sighting.
            if state.get(&dedup_key)?.as_deref().and_then(i64_of).is_some_and(|t| t < cutoff) {
                state.delete(dedup_key);
            }
            state.delete(k);
        }
        Ok(())
    }
}
