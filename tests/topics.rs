//! `topics create` / `topics check` against Tansu, a broker that implements
//! CreateTopics and DescribeConfigs (the embedded mock cluster does not).

mod common;

use std::time::Duration;

use common::{random_suffix, shipped_spec, tansu::Tansu};
use huntflow::kafka::{check_topics, create_topics, Cluster, TopicPlan};
use huntflow::topology::Topology;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn topology_with_random_names() -> Topology {
    let mut spec = shipped_spec();
    let suffix = random_suffix();
    let t = &mut spec.topics;
    for topic in
        [&mut t.events, &mut t.accepted, &mut t.candidates, &mut t.leaderboards, &mut t.prizes, &mut t.dead_letter]
    {
        topic.name = format!("{}-{suffix}", topic.name);
        topic.replication_factor = 1;
    }
    t.changelog_prefix = format!("changelog-{suffix}.");
    Topology::from_spec(spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_check_finds_a_drifted_topic_config_field_by_field() {
    let broker = Tansu::start();
    let topology = topology_with_random_names();
    let plan = TopicPlan::from_topology(&topology);
    let cluster = Cluster::at(&broker.bootstrap);
    let timeout = Duration::from_secs(20);

    // Someone created the prizes topic by hand with a short retention.
    let prizes = topology.spec().topics.prizes.name.clone();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &broker.bootstrap).create().unwrap();
    let by_hand = NewTopic::new(&prizes, 8, TopicReplication::Fixed(1)).set("retention.ms", "1000");
    admin.create_topics([&by_hand], &AdminOptions::new()).await.unwrap().pop().unwrap().unwrap();

    let created = create_topics(&cluster, &plan, timeout).await.unwrap();
    assert_eq!(created.len(), plan.len() - 1, "the existing topic is left alone");

    let drift = check_topics(&cluster, &plan, timeout).await.unwrap();
    let lines: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{prizes}: config.retention.ms: expected 2592000000, found 1000"))),
        "{lines:#?}"
    );
    assert!(drift.iter().all(|d| d.topic == prizes), "only the hand-made topic drifts: {lines:#?}");

    // The CLI says the same and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_huntflow"))
        .args(["topics", "check", "--brokers", &broker.bootstrap, "--topology"])
        .arg(write_topology(&topology))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.retention.ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_by_huntflow_have_safe_settings_and_no_drift() {
    let broker = Tansu::start();
    let topology = topology_with_random_names();
    let plan = TopicPlan::from_topology(&topology);
    let cluster = Cluster::at(&broker.bootstrap);
    let timeout = Duration::from_secs(20);
    create_topics(&cluster, &plan, timeout).await.unwrap();
    assert!(create_topics(&cluster, &plan, timeout).await.unwrap().is_empty(), "second run creates nothing");
    assert_eq!(check_topics(&cluster, &plan, timeout).await.unwrap(), vec![]);
    for t in &plan {
        assert_eq!(t.config["unclean.leader.election.enable"], "false");
        if t.role == "leaderboards" || t.role.starts_with("changelog") {
            assert_eq!(t.config["cleanup.policy"], "compact", "{}", t.name);
        }
    }
}

fn write_topology(t: &Topology) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("topology-{}.yaml", random_suffix()));
    std::fs::write(&path, serde_yaml::to_string(t.spec()).unwrap()).unwrap();
    path
}
