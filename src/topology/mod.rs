//! `topology.yaml`: the pipeline graph, hunts, tiers, reward tables, topics,
//! windows and limits. Loaded once, validated, then frozen: the field reports
//! behind huntflow paid out wrong prizes when reward tables moved mid-hunt.

mod duration;
mod spec;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use duration::HumanDuration;
pub use spec::*;
pub use validate::{Problem, MAX_TOP_N};

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl TopologyError {
    /// Every problem, for tests and for the `validate` command.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            TopologyError::Invalid(p) => p.clone(),
            TopologyError::Parse(m) => vec![Problem { path: String::new(), message: m.clone() }],
            TopologyError::Read { path, source } => vec![Problem { path: path.clone(), message: source.to_string() }],
        }
    }
}

/// A validated, immutable topology. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Topology {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    spec: TopologySpec,
    hash: String,
    tiers: HashMap<(String, String), usize>,
}

impl Topology {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TopologyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// Parses and validates; unknown keys and semantic problems are all
    /// reported together.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let mut unknown = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: TopologySpec = serde_ignored::deserialize(de, |path| {
            unknown.push(Problem { path: yaml_path(&path), message: "unknown field".into() })
        })
        .map_err(|e| TopologyError::Parse(e.to_string()))?;
        let mut problems = unknown;
        problems.extend(validate::validate(&spec));
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        Ok(Self::from_valid_spec(spec))
    }

    /// Validates an in-memory spec (tests and benchmarks adjust the shipped one).
    pub fn from_spec(spec: TopologySpec) -> Result<Self, TopologyError> {
        let problems = validate::validate(&spec);
        if !problems.is_empty() {
            return Err(TopologyError::Invalid(problems));
        }
        Ok(Self::from_valid_spec(spec))
    }

    fn from_valid_spec(spec: TopologySpec) -> Self {
        let hash = content_hash(&spec.hunts);
        let tiers = spec
            .hunts
            .iter()
            .flat_map(|h| h.tiers.iter().enumerate().map(|(i, t)| ((h.id.clone(), t.name.clone()), i)))
            .collect();
        Self { inner: Arc::new(Inner { spec, hash, tiers }) }
    }

    pub fn spec(&self) -> &TopologySpec {
        &self.inner.spec
    }

    /// Hex SHA-256 of the hunt and reward definitions, stamped on every record
    /// huntflow writes so outputs can be traced to the rules that made them.
    pub fn hash(&self) -> &str {
        &self.inner.hash
    }

    pub fn hunt(&self, hunt_id: &str) -> Option<&HuntSpec> {
        self.inner.spec.hunts.iter().find(|h| h.id == hunt_id)
    }

    /// Index of `tier` within its hunt (0 = lowest), if both exist.
    pub fn tier_index(&self, hunt_id: &str, tier: &str) -> Option<usize> {
        self.inner.tiers.get(&(hunt_id.to_owned(), tier.to_owned())).copied()
    }

    /// Per `hunt/tier`, a digest of everything that decides its standings and
    /// prizes (tier spec, hunt currency): stored with stage state, so a worker
    /// can name what changed when the topology no longer matches its state.
    pub fn tier_fingerprints(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for h in &self.inner.spec.hunts {
            for t in &h.tiers {
                let canonical = serde_json::to_vec(&(t, &h.currency)).unwrap_or_default();
                out.insert(format!("{}/{}", h.id, t.name), hex::encode(&Sha256::digest(&canonical)[..8]));
            }
        }
        out
    }

    /// The topic config huntflow creates and checks: the file's config plus
    /// safe defaults for whatever it leaves out.
    pub fn effective_topic_config(&self, role: &str, topic: &TopicSpec) -> BTreeMap<String, String> {
        safe_topic_config(role, topic)
    }
}

/// Safe broker-side defaults: never unclean leader election (it loses acked
/// writes, one of the field-report outages), `min.insync.replicas` that still
/// tolerates one broker down, compaction where the latest value per key is
/// all that matters.
pub fn safe_topic_config(role: &str, topic: &TopicSpec) -> BTreeMap<String, String> {
    let mut config = topic.config.clone();
    let rf = topic.replication_factor.max(1);
    let min_isr = if rf >= 3 { 2 } else { 1 };
    config.entry("unclean.leader.election.enable".into()).or_insert_with(|| "false".into());
    config.entry("min.insync.replicas".into()).or_insert_with(|| min_isr.to_string());
    if role == "leaderboards" || role == "changelog" {
        config.entry("cleanup.policy".into()).or_insert_with(|| "compact".into());
    }
    config
}

/// Stable 4-byte state id of a (hunt, tier): a digest of the names, so
/// state keys do not depend on where a tier sits in `topology.yaml`
/// (inserting a tier must not pay one tier's standings from another's table).
pub fn tier_state_id(hunt_id: &str, tier: &str) -> [u8; 4] {
    let d =
        Sha256::new().chain_update(b"huntflow-tier/v1\0").chain_update(hunt_id).chain_update([0]).chain_update(tier);
    let d = d.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn content_hash(hunts: &[HuntSpec]) -> String {
    // serde_json writes struct fields in declaration order, so the encoding
    // (and the hash) depends only on the content.
    let canonical = serde_json::to_vec(hunts).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

fn yaml_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", yaml_path(parent)),
        P::Map { parent, key } => {
            let parent = yaml_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => yaml_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../topology/treasure-hunt.yaml");

    #[test]
    fn shipped_topology_is_valid_and_hash_ignores_formatting() {
        let a = Topology::parse(SHIPPED).expect("shipped topology must validate");
        let reformatted = SHIPPED.replace("\n\n", "\n");
        let b = Topology::parse(&reformatted).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.spec().topics.events.partitions, 32);
    }

    #[test]
    fn changing_a_reward_changes_the_hash() {
        let a = Topology::parse(SHIPPED).unwrap();
        let changed = SHIPPED.replacen("chest_reward: 10", "chest_reward: 11", 1);
        assert_ne!(changed, SHIPPED);
        let b = Topology::parse(&changed).unwrap();
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn safe_defaults_fill_only_what_is_missing() {
        let t = TopicSpec {
            name: "x".into(),
            partitions: 1,
            replication_factor: 3,
            config: BTreeMap::from([("min.insync.replicas".into(), "3".into())]),
        };
        let c = safe_topic_config("leaderboards", &t);
        assert_eq!(c["min.insync.replicas"], "3");
        assert_eq!(c["unclean.leader.election.enable"], "false");
        assert_eq!(c["cleanup.policy"], "compact");
        let t1 = TopicSpec { replication_factor: 1, config: BTreeMap::new(), ..t };
        assert_eq!(safe_topic_config("events", &t1)["min.insync.replicas"], "1");
    }
}
