//! The embedded database behind persistence: sessions, persisted variables,
//! and the server's own bookkeeping, in one crash-safe redb file.
//!
//! Values are opaque bytes (JSON chosen by the callers); this module knows
//! tables and keys, not what sessions or variables mean. Every write is one
//! durable transaction: once a call returns `Ok`, a `kill -9` cannot undo it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

/// The tables, one per kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Session id → session record.
    Sessions,
    /// `project\u{0}name` → variable value.
    Vars,
    /// Server bookkeeping (e.g. whether the last stop was clean).
    Meta,
    /// `session\u{0}command id` → the reply it got (answered exactly once).
    Replies,
    /// `project\u{0}submission id` → the result of a form submission.
    Submissions,
    /// `project\u{0}point` → the point's last known value.
    Points,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Sessions => TableDefinition::new("sessions"),
            Table::Vars => TableDefinition::new("vars"),
            Table::Meta => TableDefinition::new("meta"),
            Table::Replies => TableDefinition::new("replies"),
            Table::Submissions => TableDefinition::new("submissions"),
            Table::Points => TableDefinition::new("points"),
        }
    }

    const ALL: [Table; 6] = [
        Table::Sessions,
        Table::Vars,
        Table::Meta,
        Table::Replies,
        Table::Submissions,
        Table::Points,
    ];
}

/// One change in a [`Store::write`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Io(String),
}

fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file, creating its folder if needed.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let store = Store { db };
        store.create_tables()?;
        Ok(store)
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        for table in Table::ALL {
            txn.open_table(table.definition()).map_err(io)?;
        }
        txn.commit().map_err(io)
    }

    /// Applies every change in one durable transaction.
    pub fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(io)?;
        for write in writes {
            match write {
                Write::Put(table, key, value) => {
                    txn.open_table(table.definition())
                        .map_err(io)?
                        .insert(key.as_str(), value.as_slice())
                        .map_err(io)?;
                }
                Write::Delete(table, key) => {
                    txn.open_table(table.definition())
                        .map_err(io)?
                        .remove(key.as_str())
                        .map_err(io)?;
                }
            }
        }
        txn.commit().map_err(io)
    }

    pub fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(&[Write::Put(table, key.to_string(), value.to_vec())])
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.write(&[Write::Delete(table, key.to_string())])
    }

    pub fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(table.definition()).map_err(io)?;
        Ok(table
            .get(key)
            .map_err(io)?
            .map(|value| value.value().to_vec()))
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(table.definition()).map_err(io)?;
        let mut found = Vec::new();
        for entry in table.range(prefix..).map_err(io)? {
            let (key, value) = entry.map_err(io)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            found.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("db.redb");
        (Store::open(&path).unwrap(), dir)
    }

    #[test]
    fn put_get_delete_and_scan() {
        let (store, dir) = temp_store("basic");
        store.put(Table::Vars, "p\u{0}a", b"1").unwrap();
        store.put(Table::Vars, "p\u{0}b", b"2").unwrap();
        store.put(Table::Vars, "q\u{0}a", b"3").unwrap();
        assert_eq!(
            store.get(Table::Vars, "p\u{0}a").unwrap(),
            Some(b"1".to_vec())
        );
        let scanned: Vec<String> = store
            .scan(Table::Vars, "p\u{0}")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(scanned, ["p\u{0}a", "p\u{0}b"]);
        store.delete(Table::Vars, "p\u{0}a").unwrap();
        assert_eq!(store.get(Table::Vars, "p\u{0}a").unwrap(), None);
        assert_eq!(
            store.get(Table::Sessions, "p\u{0}b").unwrap(),
            None,
            "tables are separate"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn data_survives_reopening() {
        let (store, dir) = temp_store("reopen");
        store
            .write(&[
                Write::Put(Table::Meta, "k".into(), b"v".to_vec()),
                Write::Put(Table::Sessions, "s".into(), b"{}".to_vec()),
            ])
            .unwrap();
        drop(store);
        let store = Store::open(&dir.join("db.redb")).unwrap();
        assert_eq!(store.get(Table::Meta, "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.scan(Table::Sessions, "").unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
