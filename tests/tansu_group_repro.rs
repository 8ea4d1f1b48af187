//! Minimal reproduction (plain rdkafka, no huntflow code, no transactions):
//! on Tansu 0.6.0, a group leader that leaves (LeaveGroup) while the group is
//! re-forming after a new member joined stays recorded as the leader, so the
//! new member's JoinGroup/SyncGroup answer REBALANCE_IN_PROGRESS forever and
//! it never gets an assignment.
//!
//! cargo test --test tansu_group_repro -- --ignored --nocapture

mod common;

use std::time::{Duration, Instant};

use common::{random_suffix, tansu::Tansu};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    let mut cfg = ClientConfig::new();
    if let Ok(d) = std::env::var("REPRO_DEBUG") {
        cfg.set("debug", d);
    }
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Polls `c` until it holds `n` partitions or `timeout` passed; returns how many it holds.
fn poll_until_assigned(c: &BaseConsumer, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let _ = c.poll(Duration::from_millis(100));
        let got = c.assignment().map(|a| a.count()).unwrap_or(0);
        if got >= n || Instant::now() >= deadline {
            return got;
        }
    }
}

async fn setup(broker: &Tansu) -> String {
    let topic = format!("repro-{}", random_suffix());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &broker.bootstrap).create().unwrap();
    let r = admin
        .create_topics([&NewTopic::new(&topic, 4, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    topic
}

/// A holds all 4 partitions; B joins (the group starts re-forming with A as
/// leader); A stops polling and closes (LeaveGroup) without rejoining.
/// Kafka: B becomes leader and gets all 4. Tansu 0.6.0: B gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reproduction of a Tansu group-coordinator bug"]
async fn leader_leaving_while_group_forms_strands_the_other_member() {
    let broker = Tansu::start();
    let topic = setup(&broker).await;
    let bootstrap = broker.bootstrap.clone();
    let held = tokio::task::spawn_blocking(move || {
        let group = format!("g-{}", random_suffix());
        let a = consumer(&bootstrap, &group);
        a.subscribe(&[&topic]).unwrap();
        assert_eq!(poll_until_assigned(&a, 4, Duration::from_secs(30)), 4, "A gets all 4");
        let b = consumer(&bootstrap, &group);
        b.subscribe(&[&topic]).unwrap();
        // Let B's JoinGroup reach the coordinator (A does not poll meanwhile).
        let _ = poll_until_assigned(&b, 1, Duration::from_secs(1));
        drop(a); // rd_kafka_consumer_close: revoke, LeaveGroup
        let t0 = Instant::now();
        let got = poll_until_assigned(&b, 4, Duration::from_secs(30));
        eprintln!("B holds {got} partitions {:?} after A left", t0.elapsed());
        got
    })
    .await
    .unwrap();
    assert_eq!(held, 4, "B must take over all partitions once A left");
}

/// Control: A leaves while the group is formed (before B joins): B gets all 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "control for the reproduction above"]
async fn leader_leaving_a_formed_group_hands_over() {
    let broker = Tansu::start();
    let topic = setup(&broker).await;
    let bootstrap = broker.bootstrap.clone();
    let held = tokio::task::spawn_blocking(move || {
        let group = format!("g-{}", random_suffix());
        let a = consumer(&bootstrap, &group);
        a.subscribe(&[&topic]).unwrap();
        assert_eq!(poll_until_assigned(&a, 4, Duration::from_secs(30)), 4, "A gets all 4");
        drop(a);
        let b = consumer(&bootstrap, &group);
        b.subscribe(&[&topic]).unwrap();
        poll_until_assigned(&b, 4, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(held, 4);
}

/// Same as the first test, but A vanishes WITHOUT LeaveGroup (destroyed with
/// RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE): Tansu then evicts the silent leader
/// on its session timeout and B takes over. So it is the LeaveGroup while the
/// group forms that strands B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "control for the reproduction above"]
async fn leader_vanishing_without_leave_while_group_forms_is_evicted() {
    let broker = Tansu::start();
    let topic = setup(&broker).await;
    let bootstrap = broker.bootstrap.clone();
    let held = tokio::task::spawn_blocking(move || {
        let group = format!("g-{}", random_suffix());
        let a = consumer(&bootstrap, &group);
        a.subscribe(&[&topic]).unwrap();
        assert_eq!(poll_until_assigned(&a, 4, Duration::from_secs(30)), 4, "A gets all 4");
        let b = consumer(&bootstrap, &group);
        b.subscribe(&[&topic]).unwrap();
        let _ = poll_until_assigned(&b, 1, Duration::from_secs(1));
        unsafe {
            rdkafka::bindings::rd_kafka_destroy_flags(
                a.client().native_ptr(),
                rdkafka::bindings::RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE as i32,
            );
        }
        std::mem::forget(a);
        let t0 = Instant::now();
        let got = poll_until_assigned(&b, 4, Duration::from_secs(30));
        eprintln!("B holds {got} partitions {:?} after A vanished", t0.elapsed());
        got
    })
    .await
    .unwrap();
    assert_eq!(held, 4);
}
