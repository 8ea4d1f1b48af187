//! The runtime's event time. Stages never compute watermarks themselves:
//! the runtime reads time records (writers' heartbeats, upstream stages'
//! watermarks) and the event times stages report, keeps each input
//! partition's progress in state, calls [`StageLogic::on_watermark`] when the
//! partition's watermark advances, and forwards it to every partition of the
//! stage's primary output, after the outputs it covers.
//!
//! State keys (per input partition): `\0src/w/<writer>` and
//! `\0src/u/<upstream partition u32>` -> latest time of that source (i64 BE);
//! `\0wm` -> the partition watermark (never decreasing).

use std::collections::{BTreeMap, HashMap};

use super::{Input, Output, PartitionState, Processed, Sink, StageError, StageLogic};
use crate::kafka::HEADER_SCHEMA;
use crate::windowing::{
    floor_step, Progress, ProgressRules, Source, TimeRecord, SCHEMA_HEARTBEAT, SCHEMA_WATERMARK, WATERMARK_KEY,
};

const SOURCE_PREFIX: &[u8] = b"\0src/";
const WM_KEY: &[u8] = b"\0wm";

/// How a stage's input partitions keep time and where it goes next.
#[derive(Clone, Copy, Debug)]
pub struct TimeConfig {
    pub rules: ProgressRules,
    /// Partitions of this stage's input (stamped on forwarded watermarks).
    pub input_partitions: i32,
    /// Partitions of the primary output that receive forwarded watermarks
    /// (0: the stage forwards none).
    pub forward_to: i32,
}

/// Cached per-partition progress over the state store.
pub(crate) struct Clock {
    cfg: TimeConfig,
    cache: HashMap<i32, Progress>,
}

fn source_key(s: &Source) -> Vec<u8> {
    match s {
        Source::Writer(w) => [b"\0src/w/".as_slice(), w.as_bytes()].concat(),
        Source::Upstream(p) => [b"\0src/u/".as_slice(), &p.to_be_bytes()].concat(),
    }
}

fn parse_source(key: &[u8]) -> Option<Source> {
    match key.get(SOURCE_PREFIX.len()..SOURCE_PREFIX.len() + 2)? {
        b"w/" => Some(Source::Writer(String::from_utf8_lossy(&key[SOURCE_PREFIX.len() + 2..]).into_owned())),
        b"u/" => Some(Source::Upstream(i32::from_be_bytes(key.get(SOURCE_PREFIX.len() + 2..)?.try_into().ok()?))),
        _ => None,
    }
}

fn i64_of(b: &[u8]) -> Option<i64> {
    b.get(..8)?.try_into().ok().map(i64::from_be_bytes)
}

impl Clock {
    pub fn new(cfg: TimeConfig) -> Self {
        Self { cfg, cache: HashMap::new() }
    }

    /// Forget cached progress (abort, rebalance): it reloads from state.
    pub fn on_rewind(&mut self) {
        self.cache.clear();
    }

    fn progress(&mut self, state: &PartitionState<'_>) -> Result<&mut Progress, StageError> {
        let p = state.partition();
        if !self.cache.contains_key(&p) {
            let mut sources = BTreeMap::new();
            for (k, v) in state.scan(SOURCE_PREFIX)? {
                if let (Some(s), Some(t)) = (parse_source(&k), i64_of(&v)) {
                    sources.insert(s, t);
                }
            }
            let wm = state.get(WM_KEY)?.as_deref().and_then(i64_of).unwrap_or(i64::MIN);
            self.cache.insert(p, Progress::new(sources, wm));
        }
        self.cache.get_mut(&p).ok_or_else(|| StageError::Stop("progress cache".into()))
    }

    /// The partition's watermark, `i64::MIN` while unknown.
    pub fn watermark(&mut self, state: &PartitionState<'_>) -> Result<i64, StageError> {
        Ok(self.progress(state)?.watermark())
    }

    /// Records `time` from `source`, ages out dead writers, and returns the
    /// new watermark if it advanced. Every change goes to state.
    fn observe(
        &mut self,
        state: &mut PartitionState<'_>,
        source: Source,
        time: i64,
    ) -> Result<Option<i64>, StageError> {
        let rules = self.cfg.rules;
        let progress = self.progress(state)?;
        if progress.observe(source.clone(), time) {
            state.put(source_key(&source), time.to_be_bytes().to_vec());
        }
        let advanced = progress.advance(&rules);
        for gone in &advanced.expired {
            state.delete(source_key(gone));
        }
        if let Some(wm) = advanced.watermark {
            state.put(WM_KEY.to_vec(), wm.to_be_bytes().to_vec());
        }
        Ok(advanced.watermark)
    }

    fn forward(&self, partition: i32, before: i64, after: i64) -> Vec<Output> {
        if self.cfg.forward_to <= 0 || (before != i64::MIN && floor_step(after) <= floor_step(before)) {
            return Vec::new();
        }
        let record =
            TimeRecord::Watermark { partition, partitions: self.cfg.input_partitions, watermark: floor_step(after) };
        let payload = record.encode();
        (0..self.cfg.forward_to)
            .map(|to| Output {
                sink: Sink::Primary,
                key: WATERMARK_KEY.to_vec(),
                payload: payload.clone(),
                partition: Some(to),
                headers: vec![(HEADER_SCHEMA, SCHEMA_WATERMARK.into())],
            })
            .collect()
    }
}

/// Outcomes of time records (`huntflow_stage_records_total{outcome}`): they
/// keep coming while a pipeline is idle, so "quiet" must ignore them.
pub const OUTCOME_HEARTBEAT: &str = "heartbeat";
pub const OUTCOME_WATERMARK: &str = "watermark";
pub const OUTCOME_WINDOWS_CLOSED: &str = "windows_closed";

pub fn is_time_outcome(outcome: &str) -> bool {
    matches!(outcome, OUTCOME_HEARTBEAT | OUTCOME_WATERMARK | OUTCOME_WINDOWS_CLOSED)
}

/// Which time source a time record speaks for, or why it is unusable.
fn time_source(schema: &str, payload: &[u8]) -> Result<(Source, i64), String> {
    match (schema, TimeRecord::decode(payload)) {
        (SCHEMA_HEARTBEAT, Ok(TimeRecord::Heartbeat { writer, time })) => Ok((Source::Writer(writer), time)),
        (SCHEMA_WATERMARK, Ok(TimeRecord::Watermark { partition, watermark, .. })) => {
            Ok((Source::Upstream(partition), watermark))
        }
        (_, Ok(other)) => Err(format!("a {schema} record holds {other:?}")),
        (_, Err(e)) => Err(format!("unreadable {schema} record: {e}")),
    }
}

/// One input record through a stage: a time record advances the clock, any
/// other goes to the stage; then what the new watermark closes, then the
/// forwarded watermark. Outputs come back in the order they must be written.
pub(crate) fn apply<L: StageLogic>(
    logic: &mut L,
    clock: &mut Clock,
    state: &mut PartitionState<'_>,
    input: &Input<'_>,
    schema: Option<&str>,
) -> Result<Processed, StageError> {
    let before = clock.watermark(state)?;
    state.watermark = before;
    let (mut processed, observed) = match schema.filter(|s| TimeRecord::is_schema(s)) {
        Some(schema) => match time_source(schema, input.payload) {
            Ok((source, time)) => {
                let outcome = if schema == SCHEMA_HEARTBEAT { OUTCOME_HEARTBEAT } else { OUTCOME_WATERMARK };
                (Processed::new(outcome, Vec::new()), Some((source, time)))
            }
            Err(reason) => {
                let dead = Output::dead_letter(logic.name(), input, "bad_time_record", reason);
                return Ok(Processed::new("dead_lettered", vec![dead]));
            }
        },
        None => {
            let processed = logic.process(state, input)?;
            let upstream = input.upstream.map_or(0, |(_, l)| l.partition);
            let observed = processed.event_time.map(|t| (Source::Upstream(upstream), t));
            (processed, observed)
        }
    };
    let Some((source, time)) = observed else { return Ok(processed) };
    if let Some(after) = clock.observe(state, source, time)? {
        state.watermark = after;
        let closed = logic.on_watermark(state, after)?;
        if processed.outcome == OUTCOME_WATERMARK && !closed.is_empty() {
            processed.outcome = OUTCOME_WINDOWS_CLOSED;
        }
        processed.outputs.extend(closed);
        processed.outputs.extend(clock.forward(state.partition(), before, after));
    }
    Ok(processed)
}

#[cfg(test)]
mod tests {
    use crate::claim::ClaimStage;
    use crate::pipeline::{time_config, StageKind};
    use crate::score::tests::small_topology;
    use crate::stage::testing::LogicHarness;
    use crate::stage::{Processed, Sink};
    use crate::windowing::TimeRecord;

    fn forwarded(p: &Processed) -> Vec<(i32, i64)> {
        p.outputs
            .iter()
            .filter(|o| o.sink == Sink::Primary && o.partition.is_some())
            .filter_map(|o| match TimeRecord::decode(&o.payload).ok()? {
                TimeRecord::Watermark { watermark, .. } => Some((o.partition?, watermark)),
                TimeRecord::Heartbeat { .. } => None,
            })
            .collect()
    }

    fn beat(writer: &str, time: i64) -> TimeRecord {
        TimeRecord::Heartbeat { writer: writer.into(), time }
    }

    #[test]
    fn claim_forwards_the_slowest_live_writer_to_every_accepted_partition() {
        let topology = small_topology();
        let mut h = LogicHarness::new(ClaimStage::new(&topology), time_config(StageKind::Claim, &topology));
        assert_eq!(forwarded(&h.feed_time(0, None, &beat("a", 5_500))), vec![(0, 5_000), (1, 5_000)]);
        // A second writer behind the first holds time back...
        assert!(forwarded(&h.feed_time(0, None, &beat("b", 4_000))).is_empty());
        assert!(forwarded(&h.feed_time(0, None, &beat("a", 9_000))).is_empty(), "b is the minimum now");
        assert_eq!(forwarded(&h.feed_time(0, None, &beat("b", 8_200))), vec![(0, 8_000), (1, 8_000)]);
        // ...until it goes silent for longer than the writer timeout (10 s).
        assert!(forwarded(&h.feed_time(0, None, &beat("a", 18_000))).is_empty());
        assert_eq!(forwarded(&h.feed_time(0, None, &beat("a", 18_300))), vec![(0, 18_000), (1, 18_000)]);
        // The dead writer's state is gone, and a restart rebuilds the same time.
        h.commit();
        h.abort();
        assert!(forwarded(&h.feed_time(0, None, &beat("a", 18_900))).is_empty(), "same second");
        assert_eq!(h.committed(0, b"\0src/w/"), 1);
    }

    #[test]
    fn a_time_record_whose_body_does_not_match_its_schema_is_refused() {
        let watermark = TimeRecord::Watermark { partition: 0, partitions: 1, watermark: 1 }.encode();
        assert!(super::time_source(crate::windowing::SCHEMA_HEARTBEAT, &watermark).is_err());
        assert!(super::time_source(crate::windowing::SCHEMA_WATERMARK, b"{").is_err());
        let ok = super::time_source(crate::windowing::SCHEMA_WATERMARK, &watermark).unwrap();
        assert_eq!(ok, (crate::windowing::Source::Upstream(0), 1));
    }
}
