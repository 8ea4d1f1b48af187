//! Local RocksDB state of one worker, partitioned by input partition.
//!
//! Column families:
//! - `state`: `partition (u32 BE) ++ stage key` -> value. Stage keys are the
//!   stage's own (see each stage), plus the runtime's `\0pos` (next input
//!   offset) and `\0lin/<stage>/<partition>` (highest upstream lineage).
//! - `meta`: `clog ++ partition (u32 BE)` -> next changelog offset this store
//!   reflects, so a restart restores only the changelog tail.
//!
//! Every write goes through one `WriteBatch` per partition per commit, after
//! the Kafka transaction that carried the same changes to the changelog
//! committed. The store is used only from its worker's own thread, never
//! from the tokio runtime.

use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

const CF_STATE: &str = "state";
const CF_META: &str = "meta";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} missing")]
    MissingCf(&'static str),
}

/// Resource bounds: the field reports' RocksDB ran out of file descriptors
/// after 72 hours; ours cannot.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    pub max_open_files: i32,
    pub block_cache_bytes: usize,
    pub write_buffer_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { max_open_files: 256, block_cache_bytes: 64 << 20, write_buffer_bytes: 32 << 20 }
    }
}

/// A state change: `None` deletes the key.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

pub struct StateStore {
    db: DB,
}

fn prefixed(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn meta_key(partition: i32) -> Vec<u8> {
    let mut k = b"clog".to_vec();
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k
}

impl StateStore {
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Self, StateError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_open_files(opts.max_open_files);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(opts.block_cache_bytes));
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(opts.write_buffer_bytes);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_STATE, cf_opts.clone()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        Ok(Self { db: DB::open_cf_descriptors(&db_opts, dir, cfs)? })
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db.cf_handle(name).ok_or(StateError::MissingCf(name))
    }

    pub fn get(&self, partition: i32, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get_cf(self.cf(CF_STATE)?, prefixed(partition, key))?)
    }

    /// Keys of `partition` starting with `prefix`, in order, while `keep` says so.
    pub fn scan(
        &self,
        partition: i32,
        prefix: &[u8],
        keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Vec<Write>, StateError> {
        self.scan_from(partition, prefix, prefix, keep)
    }

    /// [`Self::scan`] starting at key `from` (at or after `prefix`): lets a
    /// caller skip a range it deleted, whose tombstones every scan from the
    /// prefix would otherwise step over until compaction.
    pub fn scan_from(
        &self,
        partition: i32,
        prefix: &[u8],
        from: &[u8],
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<Vec<Write>, StateError> {
        let start = prefixed(partition, prefix);
        let seek = prefixed(partition, from.max(prefix));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_STATE)?, IteratorMode::From(&seek, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&start) {
                break;
            }
            let key = &k[4..];
            if !keep(key, &v) {
                break;
            }
            out.push((key.to_vec(), Some(v.to_vec())));
        }
        Ok(out)
    }

    /// Applies `writes` to `partition` atomically, with the changelog offset
    /// they bring the store up to.
    pub fn apply(&self, partition: i32, writes: &[Write], changelog_next: Option<i64>) -> Result<(), StateError> {
        let state = self.cf(CF_STATE)?;
        let mut batch = WriteBatch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.put_cf(state, prefixed(partition, k), v),
                None => batch.delete_cf(state, prefixed(partition, k)),
            }
        }
        if let Some(next) = changelog_next {
            batch.put_cf(self.cf(CF_META)?, meta_key(partition), next.to_be_bytes());
        }
        Ok(self.db.write(batch)?)
    }

    /// Next changelog offset this store reflects for `partition` (0 if none).
    pub fn changelog_next(&self, partition: i32) -> Result<i64, StateError> {
        let v = self.db.get_cf(self.cf(CF_META)?, meta_key(partition))?;
        Ok(v.and_then(|b| b.as_slice().try_into().ok()).map(i64::from_be_bytes).unwrap_or(0))
    }

    /// Forgets a partition entirely (its changelog is the source of truth).
    pub fn wipe_partition(&self, partition: i32) -> Result<(), StateError> {
        let state = self.cf(CF_STATE)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(state, prefixed(partition, b""), prefixed(partition + 1, b""));
        batch.delete_cf(self.cf(CF_META)?, meta_key(partition));
        Ok(self.db.write(batch)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen_and_partitions_do_not_leak_into_each_other() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = StateStore::open(dir.path(), StoreOptions::default()).unwrap();
            s.apply(1, &[(b"d/a".to_vec(), Some(b"1".to_vec())), (b"d/b".to_vec(), Some(b"2".to_vec()))], Some(7))
                .unwrap();
            s.apply(2, &[(b"d/a".to_vec(), Some(b"x".to_vec()))], Some(3)).unwrap();
            s.apply(1, &[(b"d/b".to_vec(), None)], None).unwrap();
        }
        let s = StateStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.get(1, b"d/a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(1, b"d/b").unwrap(), None);
        assert_eq!(s.changelog_next(1).unwrap(), 7);
        assert_eq!(s.changelog_next(9).unwrap(), 0);
        assert_eq!(s.scan(2, b"d/", |_, _| true).unwrap(), vec![(b"d/a".to_vec(), Some(b"x".to_vec()))]);
        s.wipe_partition(2).unwrap();
        assert_eq!(s.get(2, b"d/a").unwrap(), None);
        assert_eq!(s.get(1, b"d/a").unwrap(), Some(b"1".to_vec()));
    }
}
