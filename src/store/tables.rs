//! The redb file: written only by checkpoints (one durable transaction
//! each), read through a snapshot of every table taken after each one.
//!
//! Why a snapshot: redb changes only when a checkpoint commits, so one
//! read transaction per checkpoint serves every read in between; a read
//! transaction and a table opening per lookup cost more than the lookup
//! (the answer lookup of every command with an id misses the overlay and
//! comes here).

use std::sync::{Arc, RwLock};

use redb::{Database, ReadOnlyTable, ReadableDatabase, TableDefinition};

use super::overlay::Layer;
use super::{StoreError, Table, io};

/// The store's own bookkeeping in the redb file: the journal's generation
/// (see `journal`), written only by checkpoints.
const JOURNAL_STATE: TableDefinition<'static, &'static str, u64> = TableDefinition::new("journal");
const GENERATION: &str = "generation";

type Snapshot = Vec<ReadOnlyTable<&'static str, &'static [u8]>>;

/// The database and its current snapshot.
pub(super) struct Tables {
    db: Database,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Tables {
    /// Creates the tables a new file lacks and takes the first snapshot.
    pub(super) fn new(db: Database) -> Result<Tables, StoreError> {
        let txn = db.begin_write().map_err(io)?;
        for table in Table::ALL {
            txn.open_table(table.definition()).map_err(io)?;
        }
        txn.open_table(JOURNAL_STATE).map_err(io)?;
        txn.commit().map_err(io)?;
        let snapshot = RwLock::new(Arc::new(take_snapshot(&db)?));
        Ok(Tables { db, snapshot })
    }

    /// The journal generation the last checkpoint stored (0 before the
    /// first).
    pub(super) fn generation(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(JOURNAL_STATE).map_err(io)?;
        Ok(table.get(GENERATION).map_err(io)?.map_or(0, |g| g.value()))
    }

    /// One durable transaction: the layer's records (each key once, in key
    /// order) and the journal generation that makes every record written
    /// before the layer was frozen redundant; then a new snapshot (before
    /// the caller drops the layer from the overlay: see `overlay`).
    pub(super) fn checkpoint(&self, layer: &Layer, generation: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        for table in Table::ALL {
            let records = &layer[table.index()];
            if records.is_empty() {
                continue;
            }
            let mut open = txn.open_table(table.definition()).map_err(io)?;
            let mut sorted: Vec<_> = records.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in sorted {
                match value {
                    Some(value) => {
                        open.insert(key.as_str(), value.as_slice()).map_err(io)?;
                    }
                    None => {
                        open.remove(key.as_str()).map_err(io)?;
                    }
                }
            }
        }
        txn.open_table(JOURNAL_STATE)
            .map_err(io)?
            .insert(GENERATION, generation)
            .map_err(io)?;
        txn.commit().map_err(io)?;
        let snapshot = Arc::new(take_snapshot(&self.db)?);
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot;
        Ok(())
    }

    pub(super) fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let snapshot = self.snapshot();
        Ok(snapshot[table.index()]
            .get(key)
            .map_err(io)?
            .map(|value| value.value().to_vec()))
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub(super) fn scan(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let snapshot = self.snapshot();
        let mut found = Vec::new();
        for entry in snapshot[table.index()].range(prefix..).map_err(io)? {
            let (key, value) = entry.map_err(io)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            found.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(found)
    }

    /// The first `limit` records with `from <= key < to` that `skip`
    /// does not exclude, in key order.
    pub(super) fn range(
        &self,
        table: Table,
        from: &str,
        to: Option<&str>,
        limit: usize,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let snapshot = self.snapshot();
        let table = &snapshot[table.index()];
        let entries = match to {
            Some(to) => table.range(from..to),
            None => table.range(from..),
        };
        let mut found = Vec::new();
        for entry in entries.map_err(io)? {
            if found.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(io)?;
            if !skip(key.value()) {
                found.push((key.value().to_string(), value.value().to_vec()));
            }
        }
        Ok(found)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn take_snapshot(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    Table::ALL
        .iter()
        .map(|table| txn.open_table(table.definition()).map_err(io))
        .collect()
}
