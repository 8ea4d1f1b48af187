//! Ingest against the embedded broker over TCP, read back by a separate
//! rdkafka consumer.

mod common;

use std::time::Duration;

use common::{payload_str, read_topic, test_topology, Harness};
use huntflow::event::{EventKind, GameEvent};
use huntflow::ingest::IngestResponse;
use huntflow::kafka::{header_str, HEADER_REASON, HEADER_REASON_CODE, HEADER_STAGE, HEADER_TOPOLOGY_HASH};
use huntflow::simulate::{self, SimulateOptions, Target, TrafficShape};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

fn event(i: usize, shard: &str, kind: EventKind) -> GameEvent {
    GameEvent {
        v: 1,
        event_id: format!("{shard}-ev-{i}"),
        hunt_id: "winter-2026".into(),
        shard_id: shard.into(),
        region: "eu".into(),
        player_id: format!("p{}", i % 7),
        tier: "gold".into(),
        kind,
        chest_key: (kind == EventKind::ChestOpened).then(|| format!("chest-{}", i % 3)),
        points: 10,
        event_time: 1_767_225_600_000 + i as i64,
    }
}

fn ndjson(events: &[GameEvent]) -> Vec<u8> {
    events.iter().flat_map(|e| [e.encode(), b"\n".to_vec()].concat()).collect()
}

async fn post(h: &Harness, shard: &str, token: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(h.events_url(shard))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_are_readable_keyed_for_claim_with_the_topology_hash() {
    let h = Harness::start(test_topology(|_| {}), 2, |_| {}).await;
    let events: Vec<GameEvent> = (0..40)
        .map(|i| event(i, "shard-0", if i % 2 == 0 { EventKind::ChestOpened } else { EventKind::ClueSolved }))
        .collect();
    // JSON array form this time; NDJSON elsewhere.
    let body = serde_json::to_vec(&events).unwrap();
    let r = reqwest::Client::new()
        .post(h.events_url("shard-0"))
        .bearer_auth(h.token("shard-0"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let resp: IngestResponse = r.json().await.unwrap();
    assert_eq!((resp.accepted, resp.rejected, resp.failed), (40, 0, 0));

    let topic = &h.topology.spec().topics.events.name;
    let got = read_topic(h.cluster.bootstrap(), topic, 40, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 40);
    for m in &got {
        let decoded = huntflow::event::decode(m.payload().unwrap(), 1 << 20).unwrap();
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        match decoded.kind {
            EventKind::ChestOpened => assert_eq!(Some(key), decoded.chest_key.as_deref()),
            _ => assert_eq!(key, decoded.event_id),
        }
        assert_eq!(header_str(m, HEADER_TOPOLOGY_HASH).as_deref(), Some(h.topology.hash()));
    }
    // Every claim of one chest meets in one partition.
    for chest in ["chest-0", "chest-1", "chest-2"] {
        let partitions: std::collections::HashSet<i32> =
            got.iter().filter(|m| m.key() == Some(chest.as_bytes())).map(|m| m.partition()).collect();
        assert_eq!(partitions.len(), 1, "{chest} spread over {partitions:?}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unknown_token_is_401_and_another_shards_token_is_403() {
    let h = Harness::start(test_topology(|_| {}), 2, |_| {}).await;
    let body = ndjson(&[event(0, "shard-0", EventKind::ClueSolved)]);
    let r = reqwest::Client::new().post(h.events_url("shard-0")).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(post(&h, "shard-0", "not-a-token-of-anyone", body.clone()).await.status(), 401);
    let r = post(&h, "shard-0", &h.token("shard-1"), body.clone()).await;
    assert_eq!(r.status(), 403);
    assert_eq!(post(&h, "shard-0", &h.token("shard-0"), body).await.status(), 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_over_its_rate_limit_gets_429_with_retry_after_and_others_are_unaffected() {
    let topology = test_topology(|s| {
        s.ingest.events_per_second_per_shard = 1;
        s.ingest.burst_per_shard = 10;
    });
    let h = Harness::start(topology, 2, |_| {}).await;
    let batch = |shard: &str| ndjson(&(0..10).map(|i| event(i, shard, EventKind::ClueSolved)).collect::<Vec<_>>());
    assert_eq!(post(&h, "shard-0", &h.token("shard-0"), batch("shard-0")).await.status(), 200);
    let r = post(&h, "shard-0", &h.token("shard-0"), batch("shard-0")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(post(&h, "shard-1", &h.token("shard-1"), batch("shard-1")).await.status(), 200);
    // Larger than the burst can never pass: a clear 413, not an endless 429.
    let big = ndjson(&(0..11).map(|i| event(i, "shard-1", EventKind::ClueSolved)).collect::<Vec<_>>());
    assert_eq!(post(&h, "shard-1", &h.token("shard-1"), big).await.status(), 413);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_event_lands_in_dead_letter_with_its_reason_and_original_bytes() {
    let h = Harness::start(test_topology(|_| {}), 1, |_| {}).await;
    let good = event(0, "shard-0", EventKind::ClueSolved);
    let text = String::from_utf8(good.encode()).unwrap();
    let mut unknown_tier = good.clone();
    unknown_tier.tier = "mythic".into();
    let mut oversized = good.clone();
    oversized.region = "x".repeat(20_000);
    let mut bad_utf8 = good.encode();
    bad_utf8.insert(12, 0xff);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"v\":1,\"event_id\":".to_vec(), "malformed"),
        (unknown_tier.encode(), "unknown_tier"),
        (text.replace("\"points\":10", "\"points\":-3").into_bytes(), "negative_points"),
        (oversized.encode(), "oversized"),
        (bad_utf8, "bad_utf8"),
    ];
    let mut body = good.encode();
    body.push(b'\n');
    for (bytes, _) in &cases {
        body.extend_from_slice(bytes);
        body.push(b'\n');
    }
    let r = post(&h, "shard-0", &h.token("shard-0"), body).await;
    assert_eq!(r.status(), 200);
    let resp: IngestResponse = r.json().await.unwrap();
    assert_eq!((resp.accepted, resp.rejected), (1, cases.len()));
    for (i, (_, code)) in cases.iter().enumerate() {
        let result = &resp.results[i + 1];
        assert_eq!((result.status.as_str(), result.reason_code.as_deref()), ("rejected", Some(*code)));
    }

    let dlq = &h.topology.spec().topics.dead_letter.name;
    let got = read_topic(h.cluster.bootstrap(), dlq, cases.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), cases.len());
    for (bytes, code) in &cases {
        let m = got
            .iter()
            .find(|m| header_str(*m, HEADER_REASON_CODE).as_deref() == Some(*code))
            .unwrap_or_else(|| panic!("no dead letter for {code}"));
        assert_eq!(m.payload().unwrap(), bytes.as_slice(), "original bytes of {code}");
        assert_eq!(header_str(m, HEADER_STAGE).as_deref(), Some("ingest"));
        assert!(!header_str(m, HEADER_REASON).unwrap().is_empty());
    }
    let events =
        read_topic(h.cluster.bootstrap(), &h.topology.spec().topics.events.name, 1, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(payload_str(&events[0]), text);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_json_array_is_dead_lettered_whole_with_400() {
    let h = Harness::start(test_topology(|_| {}), 1, |_| {}).await;
    let body = b"[{\"v\":1}, {oops".to_vec();
    let r = reqwest::Client::new()
        .post(h.events_url("shard-0"))
        .bearer_auth(h.token("shard-0"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let got =
        read_topic(h.cluster.bootstrap(), &h.topology.spec().topics.dead_letter.name, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().unwrap(), body.as_slice());
    assert_eq!(header_str(&got[0], HEADER_REASON_CODE).as_deref(), Some("malformed_batch"));
    h.shutdown().await;
}

async fn post_array(h: &Harness, shard: &str, body: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .post(h.events_url(shard))
        .bearer_auth(h.token(shard))
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_json_array_counts_against_the_shards_rate_limit_before_it_is_dead_lettered() {
    let topology = test_topology(|s| {
        s.ingest.events_per_second_per_shard = 1;
        s.ingest.burst_per_shard = 3;
    });
    let h = Harness::start(topology, 2, |_| {}).await;
    let broken = format!("[{{\"v\":1}}, {{oops-{}", common::random_suffix()).into_bytes();
    for _ in 0..3 {
        assert_eq!(post_array(&h, "shard-0", &broken).await.status(), 400);
    }
    // The burst is spent: neither another broken body nor a valid event passes.
    let r = post_array(&h, "shard-0", &broken).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let valid = ndjson(&[event(0, "shard-0", EventKind::ClueSolved)]);
    assert_eq!(post(&h, "shard-0", &h.token("shard-0"), valid).await.status(), 429);
    // Another shard has its own limit.
    assert_eq!(post_array(&h, "shard-1", &broken).await.status(), 400);

    let topic = &h.topology.spec().topics.dead_letter.name;
    let got = read_topic(h.cluster.bootstrap(), topic, 4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "3 broken bodies of shard-0 and 1 of shard-1, nothing refused was written");
    assert!(got.iter().all(|m| header_str(m, HEADER_REASON_CODE).as_deref() == Some("malformed_batch")));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_json_array_holds_the_in_flight_budget_while_it_is_dead_lettered() {
    let h = Harness::start(test_topology(|_| {}), 2, |s| {
        s.ingest.max_in_flight_events = 1;
        s.ingest.queue_timeout = Duration::from_millis(200);
    })
    .await;
    let broker = h.cluster.embedded().unwrap();
    for id in broker.broker_ids() {
        broker.set_round_trip_time(id, Duration::from_secs(3)).unwrap();
    }
    let slow = {
        let (url, token) = (h.events_url("shard-0"), h.token("shard-0"));
        tokio::spawn(async move {
            let body = b"[{\"v\":1}, {oops".to_vec();
            reqwest::Client::new().post(url).bearer_auth(token).body(body).send().await.unwrap().status()
        })
    };
    // Wait (bounded) until the broken body holds the whole budget.
    let mut held = false;
    for _ in 0..100 {
        let m = reqwest::get(format!("{}/metrics", h.base_url)).await.unwrap().text().await.unwrap();
        if m.contains("huntflow_ingest_in_flight_events 1") {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "a broken body being dead-lettered is in flight");
    let r = post(&h, "shard-1", &h.token("shard-1"), ndjson(&[event(0, "shard-1", EventKind::ClueSolved)])).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 400, "the broken body is still dead-lettered");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_makes_ingest_push_back_with_503_instead_of_queueing() {
    let h = Harness::start(test_topology(|_| {}), 2, |s| {
        s.ingest.max_in_flight_events = 100;
        s.ingest.queue_timeout = Duration::from_millis(200);
    })
    .await;
    let broker = h.cluster.embedded().unwrap();
    for id in broker.broker_ids() {
        broker.set_round_trip_time(id, Duration::from_secs(3)).unwrap();
    }
    let slow = {
        let (url, token) = (h.events_url("shard-0"), h.token("shard-0"));
        let body = ndjson(&(0..100).map(|i| event(i, "shard-0", EventKind::ClueSolved)).collect::<Vec<_>>());
        tokio::spawn(async move {
            reqwest::Client::new().post(url).bearer_auth(token).body(body).send().await.unwrap().status()
        })
    };
    // Wait (bounded) until the first batch holds the whole budget.
    for _ in 0..100 {
        let m = reqwest::get(format!("{}/metrics", h.base_url)).await.unwrap().text().await.unwrap();
        if m.contains("huntflow_ingest_in_flight_events 100") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = post(&h, "shard-1", &h.token("shard-1"), ndjson(&[event(0, "shard-1", EventKind::ClueSolved)])).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200, "the first batch is still delivered");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failure_is_reported_to_the_caller_never_dropped() {
    let h = Harness::start(test_topology(|_| {}), 1, |s| s.ingest.delivery_timeout = Duration::from_millis(1500)).await;
    let broker = h.cluster.embedded().unwrap();
    for id in broker.broker_ids() {
        broker.set_broker_up(id, false).unwrap();
    }
    let r = post(
        &h,
        "shard-0",
        &h.token("shard-0"),
        ndjson(&(0..5).map(|i| event(i, "shard-0", EventKind::ClueSolved)).collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(r.status(), 503);
    let resp: IngestResponse = r.json().await.unwrap();
    assert_eq!((resp.accepted, resp.failed), (0, 5));
    assert!(resp.results.iter().all(|r| r.status == "failed" && r.reason.is_some()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_event_simulation_accounts_for_every_event() {
    let h = Harness::start(test_topology(|_| {}), 8, |_| {}).await;
    let opts = SimulateOptions {
        shards: 8,
        events: Some(100_000),
        batch_size: 500,
        rate: None,
        progress: false,
        shape: TrafficShape {
            duplicate_ratio: 0.05,
            malformed_ratio: 0.02,
            late_ratio: 0.01,
            ..TrafficShape::default()
        },
    };
    let target = Target::Http { base_url: h.base_url.clone(), tokens: h.tokens.clone() };
    let report = simulate::run(&h.topology, target, opts, CancellationToken::new()).await.unwrap();
    assert_eq!(report.posted, 100_000);
    assert_eq!(report.posted, report.accepted + report.rejected);
    assert_eq!(report.rejected, report.malformed_sent);
    assert!(report.duplicates_sent > 1_000 && report.malformed_sent > 500);

    let topics = &h.topology.spec().topics;
    // The events topic also holds ingest's heartbeats; read_topic skips them.
    let want = report.accepted as usize;
    let events = read_topic(h.cluster.bootstrap(), &topics.events.name, want, Duration::from_secs(30)).await;
    assert_eq!(events.len() as u64, report.accepted, "events topic");
    let counts = h.cluster.record_counts(vec![topics.dead_letter.name.clone()], Duration::from_secs(10)).await.unwrap();
    assert_eq!(counts[0].1 as u64, report.rejected, "dead-letter topic");

    let metrics = reqwest::get(format!("{}/metrics", h.base_url)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!("huntflow_ingest_events_total{{outcome=\"accepted\"}} {}", report.accepted)),
        "{metrics}"
    );
    let ready = reqwest::get(format!("{}/readyz", h.base_url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    h.shutdown().await;
}
