//! Criterion micro-benchmarks of the per-record hot paths: event decode and
//! encode, top-N update, the global top-N merge, and one record through the
//! claim, score and rank logic on a real RocksDB store (commit every 1,000
//! records, as a 100 ms commit interval does at 10k events/s per partition).
//! Numbers only; no thresholds. `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use huntflow::bench::micro::StageDriver;
use huntflow::claim::ClaimStage;
use huntflow::event::{decode, EventKind, GameEvent};
use huntflow::rank::RankStage;
use huntflow::ranking::{merge_top_n, Entry, TopN};
use huntflow::score::ScoreStage;
use huntflow::simulate::{ShardGenerator, TrafficShape};
use huntflow::stage::Sink;
use huntflow::topology::Topology;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const COMMIT_EVERY: u64 = 1_000;

fn topology() -> Topology {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/treasure-hunt.yaml");
    Topology::load(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sample_events(topology: &Topology, n: usize) -> Vec<Vec<u8>> {
    let shape = TrafficShape { duplicate_ratio: 0.0, malformed_ratio: 0.0, late_ratio: 0.0, ..Default::default() };
    let mut g = ShardGenerator::new(topology, &shape, 0, "shard-0".into());
    (0..n).map(|_| g.next_item().bytes).collect()
}

/// Event `i`: a clue for one of `players`, 1 ms of event time apart.
fn event(topology: &Topology, i: u64, players: u64) -> GameEvent {
    let hunt = &topology.spec().hunts[0];
    let player = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % players;
    GameEvent {
        v: 1,
        event_id: format!("shard-{}-{i}", i % 8),
        hunt_id: hunt.id.clone(),
        shard_id: format!("shard-{}", i % 8),
        region: "eu".into(),
        player_id: format!("player-{player}"),
        tier: hunt.tiers[(player as usize) % hunt.tiers.len()].name.clone(),
        kind: EventKind::ClueSolved,
        chest_key: None,
        points: 5 + i % 46,
        event_time: 1_767_225_600_000 + i as i64,
    }
}

fn codec(c: &mut Criterion) {
    let t = topology();
    let events = sample_events(&t, 1_000);
    let decoded: Vec<GameEvent> = events.iter().filter_map(|b| decode(b, 1 << 16).ok()).collect();
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decode_x1000", |b| {
        b.iter(|| events.iter().filter(|e| decode(black_box(e), 1 << 16).is_ok()).count())
    });
    g.bench_function("encode_x1000", |b| b.iter(|| decoded.iter().map(|e| black_box(e).encode().len()).sum::<usize>()));
    g.finish();
}

fn entries(n: usize, seed: u64) -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| Entry {
            player_id: format!("player-{}", rng.random_range(0..100_000) * 7 + i % 7),
            points: rng.random_range(0..1_000_000),
            reached_at: rng.random_range(0..1_000_000),
        })
        .collect()
}

fn ranking(c: &mut Criterion) {
    let updates = entries(10_000, 7);
    let mut g = c.benchmark_group("ranking");
    g.throughput(Throughput::Elements(updates.len() as u64));
    g.bench_function("top100_upsert_x10000", |b| {
        b.iter_batched(
            || updates.clone(),
            |updates| {
                let mut top = TopN::new(100);
                updates.into_iter().filter(|e| top.upsert(e.clone())).count()
            },
            BatchSize::LargeInput,
        )
    });
    let lists: Vec<Vec<Entry>> = (0..32)
        .map(|p| {
            let mut l = entries(100, p);
            l.sort();
            l
        })
        .collect();
    g.throughput(Throughput::Elements(32 * 100));
    g.bench_function("merge_32_lists_of_100", |b| b.iter(|| merge_top_n(lists.iter().map(Vec::as_slice), 100).len()));
    g.finish();
}

fn stages(c: &mut Criterion) {
    let t = topology();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let mut g = c.benchmark_group("stage_per_record");
    g.throughput(Throughput::Elements(COMMIT_EVERY));

    let mut claim = StageDriver::new(ClaimStage::new(&t), &dir.path().join("claim"), 0, None).expect("claim store");
    let mut next = 0u64;
    g.bench_function("claim_x1000_and_commit", |b| {
        b.iter(|| {
            for _ in 0..COMMIT_EVERY {
                let e = event(&t, next, 100_000);
                next += 1;
                black_box(claim.feed(e.claim_key().as_bytes(), &e.encode(), 0).expect("claim"));
            }
            claim.commit().expect("commit")
        })
    });

    let score_logic = ScoreStage::new(&t).expect("score");
    let mut score = StageDriver::new(score_logic, &dir.path().join("score"), 0, Some("claim")).expect("score store");
    let mut candidates = Vec::new();
    let mut next = 0u64;
    g.bench_function("score_x1000_and_commit", |b| {
        b.iter(|| {
            for _ in 0..COMMIT_EVERY {
                let e = event(&t, next, 100_000);
                next += 1;
                let out = score.feed(e.player_id.as_bytes(), &e.encode(), (next % 32) as i32).expect("score");
                if candidates.len() < 200_000 {
                    candidates.extend(out.outputs.into_iter().filter(|o| o.sink == Sink::Primary));
                }
            }
            score.commit().expect("commit")
        })
    });

    let rank_logic = RankStage::new(&t).expect("rank");
    let mut rank = StageDriver::new(rank_logic, &dir.path().join("rank"), 0, Some("score")).expect("rank store");
    let mut i = 0usize;
    if !candidates.is_empty() {
        g.bench_function("rank_x1000_candidates_and_commit", |b| {
            b.iter(|| {
                for _ in 0..COMMIT_EVERY {
                    let o = &candidates[i % candidates.len()];
                    i += 1;
                    black_box(rank.feed(&o.key, &o.payload, (i % 8) as i32).expect("rank"));
                }
                rank.commit().expect("commit")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, ranking, stages);
criterion_main!(benches);
