//! The stream's shard tree: which shards exist, who owns which, and when a
//! shard may be read (every parent finished first, so a key's records keep
//! their order across a split or merge).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_kinesis::Client;

use super::KinesisError;

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    pub parents: Vec<String>,
    /// Set once the shard is closed by a split or merge.
    pub ending_sequence: Option<String>,
}

/// Every shard of `stream`, open and closed (within retention).
pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        // The API refuses a stream name together with a next token.
        let req = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let out = req.send().await.map_err(|e| KinesisError::api("ListShards", e))?;
        for s in out.shards() {
            let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten().map(str::to_owned);
            shards.push(ShardInfo {
                id: s.shard_id().to_owned(),
                parents: parents.collect(),
                ending_sequence: s.sequence_number_range().and_then(|r| r.ending_sequence_number()).map(str::to_owned),
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_owned()),
            _ => return Ok(shards),
        }
    }
}

/// Deterministic shard ownership: instance `index` of `count` owns the shards
/// whose FNV-1a hash of the id falls on it. Every instance computes the same
/// split from the id alone, without talking to the others.
pub fn owner(shard_id: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shard_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

/// What to do with each owned shard now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ready to read: every parent is finished (or gone from the listing).
    pub ready: Vec<String>,
    /// Waiting for a parent to be finished.
    pub waiting: Vec<String>,
    pub finished: usize,
}

/// Parent-before-child: a shard is ready when none of its parents is listed
/// and unfinished. A parent missing from the listing has aged out of
/// retention, so there is nothing left to read from it.
pub fn plan(
    shards: &[ShardInfo],
    finished: &BTreeSet<String>,
    started: &BTreeSet<String>,
    index: u32,
    count: u32,
) -> Plan {
    let listed: BTreeMap<&str, &ShardInfo> = shards.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut p = Plan::default();
    for s in shards.iter().filter(|s| owner(&s.id, count) == index) {
        if finished.contains(&s.id) {
            p.finished += 1;
        } else if started.contains(&s.id) {
            continue;
        } else if s.parents.iter().all(|parent| finished.contains(parent) || !listed.contains_key(parent.as_str())) {
            p.ready.push(s.id.clone());
        } else {
            p.waiting.push(s.id.clone());
        }
    }
    p
}

/// Kinesis sequence numbers are decimal strings up to 128 bits and more;
/// without leading zeros, a longer string is a larger number.
pub fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo { id: id.into(), parents: parents.iter().map(|p| p.to_string()).collect(), ending_sequence: None }
    }

    #[test]
    fn children_wait_until_every_parent_is_finished() {
        // 0 and 1 merged into 3; 2 split into 4 and 5.
        let shards = vec![
            shard("s0", &[]),
            shard("s1", &[]),
            shard("s2", &[]),
            shard("s3", &["s0", "s1"]),
            shard("s4", &["s2"]),
            shard("s5", &["s2"]),
        ];
        let none = BTreeSet::new();
        let p = plan(&shards, &none, &none, 0, 1);
        assert_eq!(p.ready, vec!["s0", "s1", "s2"]);
        assert_eq!(p.waiting, vec!["s3", "s4", "s5"]);

        let finished: BTreeSet<String> = ["s0".to_string(), "s2".to_string()].into();
        let started: BTreeSet<String> = ["s1".to_string()].into();
        let p = plan(&shards, &finished, &started, 0, 1);
        assert_eq!(p.ready, vec!["s4", "s5"], "s3 still waits for s1");
        assert_eq!(p.waiting, vec!["s3"]);
        assert_eq!(p.finished, 2);
    }

    #[test]
    fn a_parent_gone_from_the_listing_does_not_block_its_child() {
        let shards = vec![shard("s9", &["expired"])];
        let p = plan(&shards, &BTreeSet::new(), &BTreeSet::new(), 0, 1);
        assert_eq!(p.ready, vec!["s9"]);
    }

    #[test]
    fn instances_split_the_shards_without_overlap() {
        let ids: Vec<String> = (0..40).map(|i| format!("shardId-{i:012}")).collect();
        let mut seen = BTreeSet::new();
        for index in 0..3 {
            for id in ids.iter().filter(|id| owner(id, 3) == index) {
                assert!(seen.insert(id.clone()), "{id} owned twice");
            }
        }
        assert_eq!(seen.len(), ids.len());
        assert!((0..3).all(|i| ids.iter().any(|id| owner(id, 3) == i)), "every instance owns some of 40 shards");
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(seq_cmp("9", "10"), Less);
        assert_eq!(
            seq_cmp(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Less
        );
        assert_eq!(seq_cmp("123", "123"), Equal);
    }
}
