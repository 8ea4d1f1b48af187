//! Shard bearer tokens. Only SHA-256 digests are kept, so a heap dump or a
//! debug print cannot leak a token.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

#[derive(Clone, Default)]
pub struct ShardTokens {
    by_digest: HashMap<[u8; 32], String>,
}

/// Outcome of checking a bearer token for a shard.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Ok,
    /// No such token: 401.
    Unknown,
    /// A valid token of another shard: 403.
    OtherShard(String),
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl ShardTokens {
    /// Adds `shard_id=token` lines; blank lines and `#` comments are skipped.
    pub fn add_lines(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (shard, token) =
                line.split_once('=').ok_or_else(|| format!("line {}: expected shard_id=token", n + 1))?;
            let (shard, token) = (shard.trim(), token.trim());
            if shard.is_empty() || token.len() < 16 {
                return Err(format!("line {}: shard id must be set and the token at least 16 characters", n + 1));
            }
            if let Some(prev) = self.by_digest.insert(digest(token), shard.to_owned()) {
                if prev != shard {
                    return Err(format!("line {}: the same token is given to shards {prev} and {shard}", n + 1));
                }
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, shard: &str, token: &str) {
        self.by_digest.insert(digest(token), shard.to_owned());
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    pub fn check(&self, shard: &str, token: &str) -> TokenCheck {
        match self.by_digest.get(&digest(token)) {
            None => TokenCheck::Unknown,
            Some(owner) if owner == shard => TokenCheck::Ok,
            Some(owner) => TokenCheck::OtherShard(owner.clone()),
        }
    }

    /// Fresh random tokens for `shards` shards, for the self-contained `run`.
    pub fn generate(shards: usize) -> (Self, Vec<(String, String)>) {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut tokens = Self::default();
        let pairs: Vec<(String, String)> = (0..shards)
            .map(|i| {
                let token: String = (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect();
                (shard_name(i), token)
            })
            .collect();
        for (shard, token) in &pairs {
            tokens.insert(shard, token);
        }
        (tokens, pairs)
    }
}

/// Canonical shard id for shard number `i`.
pub fn shard_name(i: usize) -> String {
    format!("shard-{i}")
}

/// Parses `shard_id=token` pairs (comma or newline separated) for clients
/// such as `simulate` that need the plain tokens.
pub fn parse_token_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut check = ShardTokens::default();
    check.add_lines(&text.replace(',', "\n"))?;
    Ok(text
        .split([',', '\n'])
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            l.split_once('=').map(|(s, t)| (s.trim().to_owned(), t.trim().to_owned()))
        })
        .collect())
}
