//! The claim stage: drops retried events, dead-letters a reused `event_id`
//! whose content differs, lets the first claim of a chest win (in log order
//! of its partition), and re-keys accepted events by player for the score
//! stage.
//!
//! Scopes (a contract; the reference model in `verify` decides the same):
//! - **dedup is per (shard, event_id)**: a shard's ids only ever suppress
//!   that shard's later copies, so one shard cannot swallow another shard's
//!   events by posting their ids first (ingest already refuses an event
//!   whose `shard_id` is not the authenticated shard: `shard_mismatch`).
//!   Two shards may use the same id; both events count.
//! - **a second copy with different content** (canonical re-encoding hashed)
//!   within the TTL is dead-lettered `conflicting_duplicate`, never silently
//!   dropped; an identical copy is a retry and is dropped (`duplicate`).
//!   A copy that changes `kind` or `chest_key` has another record key, lands
//!   in another partition and is a different event there.
//! - **a chest is won once per (hunt, chest_key)**: two hunts may reuse a
//!   chest name. The events topic stays keyed by `chest_key` alone, so every
//!   claim of a chest name, in any hunt, meets in one partition.
//!
//! State keys (per input partition; see `state` for the layout). `<scoped
//! id>` is `<len(shard_id) u8><shard_id><event_id>`, `<scoped chest>` is
//! `<len(hunt_id) u8><hunt_id><chest_key>` (identifiers are at most 128
//! bytes, and a length prefix cannot be forged by an id's content):
//! - `d/<scoped id>` -> event time (i64 BE) ++ content digest (8 bytes):
//!   seen events, for dedup;
//! - `e/<event time BE><scoped id>` -> empty: expiry index of `d/`, local
//!   only: not in the changelog, rebuilt from `d/` on restore (a `d/`
//!   tombstone leaves a stale entry, which the expiry scan drops since its
//!   time is past the cutoff);
//! - `c/<scoped chest>` -> winning event id: chest claims, kept for the hunt;
//! - `\0maxt` -> highest event time seen: the stage's event-time clock.
//!
//! Dedup expires on event time, never wall clock, so a replay decides
//! exactly as the first run did.

use sha2::{Digest, Sha256};

use crate::event::{self, EventKind, GameEvent};
use crate::kafka::HEADER_SCHEMA;
use crate::stage::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::topology::Topology;

/// Expired dedup entries removed per commit, so one commit stays short.
const PURGE_PER_COMMIT: usize = 10_000;
/// Bytes of SHA-256 kept per dedup entry to recognise a changed copy.
const DIGEST_LEN: usize = 8;
/// Reason code of a reused event id with different content.
pub const CONFLICTING_DUPLICATE: &str = "conflicting_duplicate";

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
    b.get(..8)?.try_into().ok().map(i64::from_be_bytes)
}

/// `<len u8><scope><name>`: unambiguous whatever bytes the two parts hold.
fn scoped(scope: &str, name: &str) -> Vec<u8> {
    let len = u8::try_from(scope.len()).unwrap_or(u8::MAX);
    let scope = &scope.as_bytes()[..usize::from(len)];
    [&[len][..], scope, name.as_bytes()].concat()
}

/// First bytes of SHA-256 of the canonical encoding.
fn content_digest(event: &GameEvent) -> [u8; DIGEST_LEN] {
    let hash = Sha256::digest(event.encode());
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&hash[..DIGEST_LEN]);
    d
}

fn dead_letter(input: &Input<'_>, code: &'static str, reason: String) -> Output {
    Output::dead_letter("claim", input, code, reason)
}

fn rejected(outcome: &'static str, output: Output) -> Processed {
    Processed::new(outcome, vec![output])
}

impl ClaimStage {
    /// The topology check ingest also makes: the hunt and tier must exist.
    fn check_hunt(&self, event: &GameEvent) -> Result<(), event::DecodeError> {
        if self.topology.tier_index(&event.hunt_id, &event.tier).is_some() {
            return Ok(());
        }
        Err(if self.topology.hunt(&event.hunt_id).is_none() {
            event::DecodeError::UnknownHunt(event.hunt_id.clone())
        } else {
            event::DecodeError::UnknownTier { hunt: event.hunt_id.clone(), tier: event.tier.clone() }
        })
    }

    /// Records the event in the dedup state (`None`), or says why it must
    /// not count: a silent retry, or a conflicting copy to dead-letter.
    fn dedup(
        &self,
        state: &mut PartitionState<'_>,
        input: &Input<'_>,
        event: &GameEvent,
    ) -> Result<Option<Processed>, StageError> {
        let max_time = state.get(b"\0maxt")?.as_deref().and_then(i64_of).unwrap_or(i64::MIN).max(event.event_time);
        state.put(b"\0maxt".to_vec(), max_time.to_be_bytes().to_vec());

        let id = scoped(&event.shard_id, &event.event_id);
        let dedup_key = [b"d/".as_slice(), &id].concat();
        let digest = content_digest(event);
        if let Some(seen) = state.get(&dedup_key)? {
            // Still within the TTL (on the event-time clock): a copy.
            if i64_of(&seen).is_some_and(|t| t >= max_time.saturating_sub(self.ttl_ms)) {
                // Entries without a digest (older state) count as identical.
                return Ok(Some(match seen.get(8..) {
                    Some(held) if !held.is_empty() && held != digest => {
                        let reason = format!(
                            "event {} of shard {} was already seen within the dedup TTL with different content \
                             (content digest {}, now {}); the first copy counts",
                            event.event_id,
                            event.shard_id,
                            hex::encode(held),
                            hex::encode(digest)
                        );
                        rejected("conflicting_duplicate", dead_letter(input, CONFLICTING_DUPLICATE, reason))
                    }
                    _ => Processed::new("duplicate", vec![]),
                }));
            }
        }
        state.put(dedup_key, [event.event_time.to_be_bytes().as_slice(), &digest].concat());
        state.put([b"e/".as_slice(), &event.event_time.to_be_bytes(), &id].concat(), Vec::new());
        Ok(None)
    }

    /// The first claim of a chest in its hunt wins; later ones are rejected.
    fn claim_chest(
        &self,
        state: &mut PartitionState<'_>,
        input: &Input<'_>,
        event: &GameEvent,
    ) -> Result<Option<Processed>, StageError> {
        if event.kind != EventKind::ChestOpened {
            return Ok(None);
        }
        let chest = event.chest_key.as_deref().unwrap_or_default();
        let claim_key = [b"c/".as_slice(), &scoped(&event.hunt_id, chest)].concat();
        if let Some(winner) = state.get(&claim_key)? {
            let reason = format!(
                "chest {chest} of hunt {} was already claimed by event {}",
                event.hunt_id,
                String::from_utf8_lossy(&winner)
            );
            return Ok(Some(rejected("chest_rejected", dead_letter(input, "chest_already_claimed", reason))));
        }
        state.put(claim_key, event.event_id.as_bytes().to_vec());
        Ok(None)
    }
}

impl StageLogic for ClaimStage {
    fn name(&self) -> &'static str {
        "claim"
    }

    fn process(&mut self, state: &mut PartitionState<'_>, input: &Input<'_>) -> Result<Processed, StageError> {
        let event =
            match event::decode(input.payload, self.max_event_bytes).and_then(|e| self.check_hunt(&e).map(|()| e)) {
                Ok(e) => e,
                Err(err) => return Ok(rejected("dead_lettered", dead_letter(input, err.code(), err.to_string()))),
            };
        if let Some(done) = self.dedup(state, input, &event)? {
            return Ok(done);
        }
        if let Some(done) = self.claim_chest(state, input, &event)? {
            return Ok(done);
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

    fn is_local_index(&self, key: &[u8]) -> bool {
        key.starts_with(b"e/")
    }

    fn index_for(&self, key: &[u8], value: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        let id = key.strip_prefix(b"d/")?;
        let time = value.and_then(i64_of)?;
        Some(([b"e/".as_slice(), &time.to_be_bytes(), id].concat(), Vec::new()))
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
            let id = &k[10..];
            let dedup_key = [b"d/".as_slice(), id].concat();
            // Only drop the dedup entry if it is this (old) sighting.
            if state.get(&dedup_key)?.as_deref().and_then(i64_of).is_some_and(|t| t < cutoff) {
                state.delete(dedup_key);
            }
            state.delete(k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
