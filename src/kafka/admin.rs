//! `huntflow topics create|check`: the topology's topics with safe settings
//! on any cluster, and a field-by-field drift report for existing ones.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Cluster, KafkaError};
use crate::topology::{safe_topic_config, TopicSpec, Topology};

/// One topic as huntflow wants it.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicPlan {
    pub role: String,
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

/// The stages whose state is mirrored to a compacted changelog, with the
/// input role that fixes their partition count.
const CHANGELOG_STAGES: [(&str, &str); 3] = [("claim", "events"), ("score", "accepted"), ("rank", "candidates")];

impl TopicPlan {
    /// Every topic of the topology, changelogs included.
    pub fn from_topology(topology: &Topology) -> Vec<TopicPlan> {
        let topics = &topology.spec().topics;
        let mut plan: Vec<TopicPlan> = topics
            .all()
            .into_iter()
            .map(|(role, t)| TopicPlan {
                role: role.into(),
                name: t.name.clone(),
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                config: safe_topic_config(role, t),
            })
            .collect();
        let source = &topology.spec().source;
        if let (crate::topology::SourceKind::Kinesis, Some(k)) = (source.kind, &source.kinesis) {
            plan.push(TopicPlan {
                role: "kinesis_checkpoints".into(),
                name: k.checkpoints.name.clone(),
                partitions: k.checkpoints.partitions,
                replication_factor: k.checkpoints.replication_factor,
                config: safe_topic_config("changelog", &k.checkpoints),
            });
        }
        for (stage, input) in CHANGELOG_STAGES {
            let Some((_, input)) = topics.all().into_iter().find(|(r, _)| *r == input) else { continue };
            let spec = TopicSpec {
                name: format!("{}{stage}", topics.changelog_prefix),
                partitions: input.partitions,
                replication_factor: input.replication_factor,
                config: BTreeMap::new(),
            };
            plan.push(TopicPlan {
                role: format!("changelog.{stage}"),
                config: safe_topic_config("changelog", &spec),
                name: spec.name,
                partitions: spec.partitions,
                replication_factor: spec.replication_factor,
            });
        }
        plan
    }
}

/// One difference between the plan and the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub topic: String,
    pub field: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: expected {}, found {}", self.topic, self.field, self.expected, self.actual)
    }
}

fn admin(cluster: &Cluster) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    Ok(cluster.client_config().create()?)
}

/// Creates every missing topic; existing ones are left as they are (use
/// `check_topics` to see how they differ). Returns the names created.
pub async fn create_topics(
    cluster: &Cluster,
    plan: &[TopicPlan],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let admin = admin(cluster)?;
    let new_topics: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication_factor)),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin.create_topics(new_topics.iter(), &opts).await?;
    let mut created = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => errors.push(format!("{name}: {code}")),
        }
    }
    if errors.is_empty() {
        Ok(created)
    } else {
        Err(KafkaError::Admin(errors.join("; ")))
    }
}

/// Compares the cluster with the plan: missing topics, partition counts,
/// replication factors and every planned config key.
pub async fn check_topics(cluster: &Cluster, plan: &[TopicPlan], timeout: Duration) -> Result<Vec<Drift>, KafkaError> {
    let config = cluster.client_config();
    let layout: BTreeMap<String, (i32, i32)> = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
        let consumer: BaseConsumer = config.create()?;
        let md = consumer.fetch_metadata(None, timeout)?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let rf = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
                (t.name().to_owned(), (t.partitions().len() as i32, rf))
            })
            .collect())
    })
    .await
    .map_err(|e| KafkaError::Join(e.to_string()))??;

    let mut drift = Vec::new();
    let existing: Vec<&TopicPlan> = plan.iter().filter(|t| layout.contains_key(&t.name)).collect();
    for t in plan.iter().filter(|t| !layout.contains_key(&t.name)) {
        drift.push(Drift {
            topic: t.name.clone(),
            field: "topic".into(),
            expected: "present".into(),
            actual: "missing".into(),
        });
    }
    for t in &existing {
        let (partitions, rf) = layout[&t.name];
        if partitions != t.partitions {
            drift.push(Drift {
                topic: t.name.clone(),
                field: "partitions".into(),
                expected: t.partitions.to_string(),
                actual: partitions.to_string(),
            });
        }
        if rf != t.replication_factor {
            drift.push(Drift {
                topic: t.name.clone(),
                field: "replication_factor".into(),
                expected: t.replication_factor.to_string(),
                actual: rf.to_string(),
            });
        }
    }
    if existing.is_empty() {
        return Ok(drift);
    }
    let admin = admin(cluster)?;
    let specifiers: Vec<ResourceSpecifier<'_>> = existing.iter().map(|t| ResourceSpecifier::Topic(&t.name)).collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin.describe_configs(specifiers.iter(), &opts).await?;
    for (t, result) in existing.iter().zip(described) {
        let resource = result.map_err(|code| KafkaError::Admin(format!("describe configs of {}: {code}", t.name)))?;
        let actual = resource.entry_map();
        for (key, want) in &t.config {
            let have = actual.get(key.as_str()).and_then(|e| e.value.clone());
            if have.as_deref() != Some(want.as_str()) {
                drift.push(Drift {
                    topic: t.name.clone(),
                    field: format!("config.{key}"),
                    expected: want.clone(),
                    actual: have.unwrap_or_else(|| "<unset>".into()),
                });
            }
        }
    }
    Ok(drift)
}
