//! Persistence behind one small interface, [`Store`]: sessions, persisted
//! variables, answers kept for repeats and the server's own bookkeeping.
//! Chosen once at start: the embedded database (one crash-safe redb file,
//! the default, [`Embedded`]) or, in cluster mode, the NATS JetStream
//! buckets every node shares (`crate::cluster`).
//!
//! Values are opaque bytes (JSON chosen by the callers); this module knows
//! tables and keys, not what sessions or variables mean.
//!
//! Writes are group-committed: one writer thread takes every batch queued
//! at that moment and makes them durable together (one `fdatasync` for
//! all), in the order they were queued. A caller either waits for its
//! batch to be durable ([`Store::write`], or [`Store::write_soon`] and
//! then [`Commit::durable`]) or lets it be written behind (drops the
//! [`Commit`]): once a wait returns `Ok`, a `kill -9` or a power cut
//! cannot undo the batch.
//!
//! In the embedded store a group is made durable in a write-ahead journal
//! (`journal`: one record, one `pwrite`), then laid in an in-memory
//! overlay that reads look in before the redb file (`overlay`), so that
//! reads see it before anyone is told; a checkpoint (one durable redb
//! transaction, in the background: `writer`) now and then writes the
//! overlay to redb and makes the journal's records redundant, and on start
//! the records written since the last checkpoint are applied again.

mod journal;
mod overlay;
mod tables;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use redb::{Database, TableDefinition};
use tokio::sync::oneshot;

use crate::cluster::{Change, Claimed, ClusterError, Held, SharedKv};
use journal::Journal;
use overlay::Overlay;
use tables::Tables;
use writer::{Checkpointer, Queue, Waiter, Writer};

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
    /// Project-wide pushed UI values (`uiSet`, `uiSessionSet` to a scope),
    /// kept for the nodes of a cluster that start later; cluster mode only
    /// (one node keeps them in memory). Keys: see `runtime/fanout.rs`.
    Ui,
    /// When each kept answer expires, in key order (keys and pruning: see
    /// `runtime/delivery.rs`): pruning reads only what is due.
    Expiries,
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
            Table::Ui => TableDefinition::new("ui"),
            Table::Expiries => TableDefinition::new("expiries"),
        }
    }

    /// The table's NATS key-value bucket in cluster mode.
    fn bucket(self) -> &'static str {
        match self {
            Table::Sessions => "switchboard_sessions",
            Table::Vars => "switchboard_vars",
            Table::Meta => "switchboard_meta",
            Table::Replies => "switchboard_replies",
            Table::Submissions => "switchboard_submissions",
            Table::Points => "switchboard_points",
            Table::Ui => "switchboard_ui",
            Table::Expiries => "switchboard_expiries",
        }
    }

    /// The table's place in [`Table::ALL`] (its code in the journal).
    fn index(self) -> usize {
        self as usize
    }

    /// New tables go last: the journal names a table by its place here.
    const ALL: [Table; 8] = [
        Table::Sessions,
        Table::Vars,
        Table::Meta,
        Table::Replies,
        Table::Submissions,
        Table::Points,
        Table::Ui,
        Table::Expiries,
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
    /// The shared store (cluster mode) could not be reached or used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

/// The store a node runs on, chosen once at start.
pub enum Store {
    /// This node's own database file (the default).
    Embedded(Embedded),
    /// The buckets every node of a cluster shares (`--cluster`); boxed:
    /// the NATS client is many times the size of the embedded handles.
    Shared(Box<SharedKv>),
}

/// What `/healthz` tells about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// `embedded` or `nats`.
    pub kind: &'static str,
    /// Whether NATS is reachable now (`None` for the embedded store).
    pub connected: Option<bool>,
}

impl Store {
    /// Opens (or creates) the embedded database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Embedded::open(path).map(Store::Embedded)
    }

    /// Connects to the cluster's NATS at `url` as node `node`, its buckets
    /// kept in `replicas` copies.
    pub fn connect_shared(url: &str, node: &str, replicas: usize) -> Result<Store, StoreError> {
        let buckets = Table::ALL.map(Table::bucket);
        Ok(Store::Shared(Box::new(SharedKv::connect(
            url, node, &buckets, replicas,
        )?)))
    }

    /// The cluster's buckets, in cluster mode.
    pub fn shared(&self) -> Option<&SharedKv> {
        match self {
            Store::Shared(shared) => Some(shared),
            Store::Embedded(_) => None,
        }
    }

    /// Claims the record `key` of `table` for this node across the cluster
    /// (see `crate::cluster` claims); `None` with the embedded store, where
    /// one process is the whole of who could run it.
    pub async fn claim(&self, table: Table, key: &str) -> Option<Result<Claimed, StoreError>> {
        let Store::Shared(shared) = self else {
            return None;
        };
        let claim_key = format!("{}\u{0}{key}", table.bucket());
        Some(
            shared
                .claim(&claim_key, Some((table.bucket(), key)))
                .await
                .map_err(StoreError::from),
        )
    }

    /// A lock named `name` across the cluster, held until the returned
    /// claim is released (or its node dies); `None` with the embedded store.
    pub async fn lock(&self, name: &str) -> Option<Result<Held, StoreError>> {
        let Store::Shared(shared) = self else {
            return None;
        };
        let key = format!("lock\u{0}{name}");
        Some(match shared.claim(&key, None).await {
            Ok(Claimed::Mine(held) | Claimed::Abandoned(held)) => Ok(held),
            Ok(Claimed::Answered(_)) => Err(StoreError::Io("a lock has no record".into())),
            Err(error) => Err(error.into()),
        })
    }

    /// The value of `key` and its revision, for [`Store::put_at`]
    /// (cluster mode only: the embedded store's writers are this process's).
    pub fn get_versioned(
        &self,
        table: Table,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        match self {
            Store::Embedded(_) => Err(StoreError::Io("no revisions in the embedded store".into())),
            Store::Shared(shared) => Ok(shared.entry(table.bucket(), key)?),
        }
    }

    /// Compare-and-set: stores `value` if `key` is still at `revision`;
    /// `Ok(false)` when another writer came first.
    pub fn put_at(
        &self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(_) => Err(StoreError::Io("no revisions in the embedded store".into())),
            Store::Shared(shared) => Ok(shared.update(table.bucket(), key, value, revision)?),
        }
    }

    /// Whether other nodes read and write this store too.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Shared(_))
    }

    pub fn health(&self) -> Health {
        match self {
            Store::Embedded(_) => Health {
                kind: "embedded",
                connected: None,
            },
            Store::Shared(shared) => Health {
                kind: "nats",
                connected: Some(shared.is_connected()),
            },
        }
    }

    /// Applies every change and waits until it is durable (blocking: call
    /// it off the async threads, or where a wait is meant).
    pub fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        match self {
            Store::Embedded(embedded) => embedded.write(writes),
            Store::Shared(shared) => Ok(shared.write_and_wait(changes(writes.to_vec()))?),
        }
    }

    /// Queues the changes without waiting; see [`Commit`].
    pub fn write_soon(&self, writes: Vec<Write>) -> Commit {
        match self {
            Store::Embedded(embedded) => embedded.write_soon(writes),
            Store::Shared(_) if writes.is_empty() => Commit::done(),
            Store::Shared(shared) => {
                let (sender, receiver) = oneshot::channel();
                shared.write(changes(writes), Some(sender));
                Commit(Some(receiver))
            }
        }
    }

    pub fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(&[Write::Put(table, key.to_string(), value.to_vec())])
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.write(&[Write::Delete(table, key.to_string())])
    }

    /// Reads a stored record (a batch still queued is not seen).
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Embedded(embedded) => embedded.get(table, key),
            Store::Shared(shared) => Ok(shared.get(table.bucket(), key)?),
        }
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Embedded(embedded) => embedded.scan(table, prefix),
            Store::Shared(shared) => Ok(shared.scan(table.bucket(), prefix)?),
        }
    }

    /// The first `limit` records with `from <= key < to` (no end when `to`
    /// is `None`), in key order: a walk through a big table in bounded
    /// steps. In cluster mode the bucket's keys are listed to find them.
    pub fn range(
        &self,
        table: Table,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Embedded(embedded) => embedded.range(table, from, to, limit),
            Store::Shared(shared) => Ok(shared.range(table.bucket(), from, to, limit)?),
        }
    }
}

/// Whether `from <= key < to` (`to: None` is no end).
fn within(key: &str, from: &str, to: Option<&str>) -> bool {
    key >= from && to.is_none_or(|to| key < to)
}

fn changes(writes: Vec<Write>) -> Vec<Change> {
    writes
        .into_iter()
        .map(|write| match write {
            Write::Put(table, key, value) => Change::Put {
                bucket: table.bucket(),
                key,
                value,
            },
            Write::Delete(table, key) => Change::Delete {
                bucket: table.bucket(),
                key,
            },
        })
        .collect()
}

/// redb's page cache (90 % of it for reads). Its default (1 GiB) is held
/// by the process as the file grows: answers are kept an hour, one per
/// command with an `id`, and a 5-minute browser-shaped soak at 14 000
/// commands/s took the server from 0.2 to 2.8 GiB of RSS. What it saves is
/// a `pread` of a B-tree page the kernel's page cache holds anyway: the
/// same soak costs the same CPU per command with 16 MiB as with 64 MiB
/// (67.6 and 67.8 µs), in half the memory (58 against 113 MiB), and the
/// cache is full by the end of a minute's warm-up instead of filling for
/// ten (+5.2 % of RSS over a 10-minute soak with 64 MiB).
const CACHE_BYTES: usize = 16 << 20;

/// The embedded database: one redb file, group-committed.
pub struct Embedded {
    tables: Arc<Tables>,
    queue: Arc<Queue>,
    overlay: Arc<Overlay>,
    #[cfg_attr(not(test), allow(dead_code))]
    checkpoints: Arc<writer::Status>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A queued batch: await [`Commit::durable`] before telling anyone it
/// happened, or drop it to have the batch written behind.
#[must_use = "drop it explicitly to write behind"]
pub struct Commit(Option<oneshot::Receiver<Result<(), String>>>);

impl Commit {
    /// A batch with nothing in it: durable already.
    pub fn done() -> Commit {
        Commit(None)
    }

    /// A batch that was not written (the reason is what waiting returns).
    pub fn failed(reason: String) -> Commit {
        let (sender, receiver) = oneshot::channel();
        let _ = sender.send(Err(reason));
        Commit(Some(receiver))
    }

    /// Waits until the batch is durable.
    pub async fn durable(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => match receiver.await {
                Ok(outcome) => outcome.map_err(StoreError::Io),
                Err(_) => Err(StoreError::Io("the store's writer stopped".into())),
            },
        }
    }
}

impl Embedded {
    /// Opens (or creates) the database file, creating its folder if needed,
    /// and applies what its journal holds beyond the last checkpoint.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        create_private(path).map_err(io)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let tables = Arc::new(Tables::new(db)?);
        let generation = tables.generation()?;
        let (mut journal, groups) = Journal::open(path, generation).map_err(io)?;
        // Replayed, and both journal files made redundant: the next
        // generation's file may hold records of this start's replay.
        let start = generation + 2;
        tables.checkpoint(&overlay::layer_of(groups.iter().flatten()), start)?;
        journal.restart(start);
        let overlay = Arc::new(Overlay::default());
        let queue = Arc::new(Queue::default());
        let checkpointer = Checkpointer::spawn(tables.clone(), overlay.clone()).map_err(io)?;
        let checkpoints = checkpointer.status();
        let writer = Writer::new(
            tables.clone(),
            queue.clone(),
            overlay.clone(),
            journal,
            checkpointer,
        );
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(io)?;
        Ok(Embedded {
            tables,
            queue,
            overlay,
            checkpoints,
            writer: Some(writer),
        })
    }

    /// Applies every change in one durable transaction, and waits for it
    /// (blocking: call it off the async threads, or where a wait is meant).
    pub fn write(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let (sender, receiver) = mpsc::channel();
        self.queue
            .push(writes.to_vec(), Some(Waiter::Blocking(sender)));
        receiver
            .recv()
            .map_err(|_| StoreError::Io("the store's writer stopped".into()))?
            .map_err(StoreError::Io)
    }

    /// Queues the changes for the next group commit without waiting.
    pub fn write_soon(&self, writes: Vec<Write>) -> Commit {
        if writes.is_empty() {
            return Commit::done();
        }
        let (sender, receiver) = oneshot::channel();
        self.queue.push(writes, Some(Waiter::Async(sender)));
        Commit(Some(receiver))
    }

    pub fn put(&self, table: Table, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(&[Write::Put(table, key.to_string(), value.to_vec())])
    }

    pub fn delete(&self, table: Table, key: &str) -> Result<(), StoreError> {
        self.write(&[Write::Delete(table, key.to_string())])
    }

    /// How many group commits the writer made so far.
    pub fn commits(&self) -> u64 {
        self.queue
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads a committed record (a batch still queued is not seen): the
    /// overlay's, else redb's (in that order: see `overlay`).
    pub fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.overlay.get(table, key) {
            return Ok(value);
        }
        self.tables.get(table, key)
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let over = self.overlay.under(table, prefix);
        let found = self.tables.scan(table, prefix)?;
        Ok(overlay::merge(found, over))
    }

    /// See [`Store::range`]. redb's records the overlay replaces or
    /// deletes are skipped while walking, so that `limit` counts live ones.
    pub fn range(
        &self,
        table: Table,
        from: &str,
        to: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let over = self.overlay.matching(table, |key| within(key, from, to));
        let found = self
            .tables
            .range(table, from, to, limit, |key| over.contains_key(key))?;
        let mut merged = overlay::merge(found, over);
        merged.truncate(limit);
        Ok(merged)
    }

    /// Waits until no checkpoint is running (tests copy the files then).
    #[cfg(test)]
    fn settle(&self) {
        self.checkpoints.settle();
    }
}

/// Creates the database file readable by its owner only (0600): it holds
/// live session ids, which are credentials. An existing file is left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

impl Drop for Embedded {
    /// Lets the writer commit what is queued, then stop; the database is
    /// closed when this returns.
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (Embedded, PathBuf) {
        let dir = std::env::temp_dir().join(format!("sb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("db.redb");
        (Embedded::open(&path).unwrap(), dir)
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
    fn batches_written_behind_are_committed_in_order_before_close() {
        let (store, dir) = temp_store("behind");
        for n in 0..50 {
            drop(store.write_soon(vec![Write::Put(
                Table::Vars,
                "k".into(),
                n.to_string().into_bytes(),
            )]));
        }
        drop(store.write_soon(vec![Write::Delete(Table::Vars, "gone".into())]));
        drop(store);
        let store = Embedded::open(&dir.join("db.redb")).unwrap();
        assert_eq!(
            store.get(Table::Vars, "k").unwrap(),
            Some(b"49".to_vec()),
            "the last queued value wins"
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_writers_share_commits_and_each_sees_its_write() {
        let (store, dir) = temp_store("group");
        let store = std::sync::Arc::new(store);
        let before = store.commits();
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let key = format!("t{n}-{i}");
                        store.put(Table::Replies, &key, b"x").unwrap();
                        // Durable and visible once `put` returned.
                        assert!(store.get(Table::Replies, &key).unwrap().is_some());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(store.scan(Table::Replies, "t").unwrap().len(), 320);
        let commits = store.commits() - before;
        assert!(
            commits < 320,
            "{commits} transactions for 320 concurrent writes"
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_awaited_commit_is_durable() {
        let (store, dir) = temp_store("await");
        store
            .write_soon(vec![Write::Put(Table::Meta, "a".into(), b"1".to_vec())])
            .durable()
            .await
            .unwrap();
        assert_eq!(store.get(Table::Meta, "a").unwrap(), Some(b"1".to_vec()));
        Commit::done().durable().await.unwrap();
        drop(store);
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
        let store = Embedded::open(&dir.join("db.redb")).unwrap();
        assert_eq!(store.get(Table::Meta, "k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.scan(Table::Sessions, "").unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What a SIGKILL would leave of the store's files now: a copy of them
    /// as the page cache holds them (a killed process leaves that behind),
    /// made while the writer is idle. `names` picks the files.
    fn crash_image(dir: &Path, to: &str, names: &[&str]) -> PathBuf {
        let to = dir.join(to);
        std::fs::create_dir_all(&to).unwrap();
        for name in names {
            std::fs::copy(dir.join(name), to.join(name)).unwrap();
        }
        to.join("db.redb")
    }

    const BOTH: [&str; 3] = ["db.redb", "db.redb-journal", "db.redb-journal.1"];

    fn put(table: Table, key: &str, value: &[u8]) -> Write {
        Write::Put(table, key.into(), value.to_vec())
    }

    #[test]
    fn a_crash_after_the_journal_record_replays_it_on_start() {
        let (store, dir) = temp_store("replay");
        store
            .write(&[
                put(Table::Vars, "a", b"1"),
                put(Table::Replies, "s\u{0}c-1", b"ok"),
            ])
            .unwrap();
        store
            .write(&[
                Write::Delete(Table::Vars, "a".into()),
                put(Table::Vars, "b", b"2"),
            ])
            .unwrap();
        let image = crash_image(&dir, "image", &BOTH);
        // The database file alone has not got them: they were durable in
        // the journal only when the writes returned.
        let alone = Embedded::open(&crash_image(&dir, "alone", &["db.redb"])).unwrap();
        assert_eq!(alone.get(Table::Vars, "b").unwrap(), None);
        assert_eq!(alone.get(Table::Vars, "a").unwrap(), None);
        drop(alone);
        let replayed = Embedded::open(&image).unwrap();
        assert_eq!(
            replayed.get(Table::Vars, "a").unwrap(),
            None,
            "deleted again"
        );
        assert_eq!(replayed.get(Table::Vars, "b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(
            replayed.get(Table::Replies, "s\u{0}c-1").unwrap(),
            Some(b"ok".to_vec())
        );
        drop((store, replayed));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_journal_tail_is_dropped_and_the_journal_goes_on() {
        let (store, dir) = temp_store("torn");
        let first = put(Table::Vars, "a", b"1");
        store.write(std::slice::from_ref(&first)).unwrap();
        let image = crash_image(&dir, "image", &BOTH);
        drop(store);
        // A second record cut short, as a crash in the middle of its
        // `pwrite` leaves it (nobody was told it was durable).
        let [journal_file, _] = journal::file_paths(&image);
        let mut bytes = std::fs::read(&journal_file).unwrap();
        let generation = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let at = journal::encode_record(generation, 0, &[&first]).len();
        let torn = journal::encode_record(generation, 1, &[&put(Table::Vars, "b", b"2")]);
        bytes[at..at + torn.len() - 3].copy_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(&journal_file, bytes).unwrap();
        let reopened = Embedded::open(&image).unwrap();
        assert_eq!(reopened.get(Table::Vars, "a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            reopened.get(Table::Vars, "b").unwrap(),
            None,
            "torn: not applied"
        );
        reopened.write(&[put(Table::Vars, "c", b"3")]).unwrap();
        let again = Embedded::open(&crash_image(image.parent().unwrap(), "again", &BOTH)).unwrap();
        assert_eq!(again.get(Table::Vars, "a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(again.get(Table::Vars, "b").unwrap(), None);
        assert_eq!(again.get(Table::Vars, "c").unwrap(), Some(b"3".to_vec()));
        drop((reopened, again));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_record_of_an_older_generation_is_never_replayed() {
        let (store, dir) = temp_store("stale");
        // Generation g: `k` at seq 0, `m` at seq 1.
        store.write(&[put(Table::Vars, "k", b"1")]).unwrap();
        store.write(&[put(Table::Vars, "m", b"old")]).unwrap();
        drop(store);
        // A new generation whose seq 0 has exactly the length of g's seq 0,
        // so g's seq 1 follows it where a seq 1 is expected.
        let store = Embedded::open(&dir.join("db.redb")).unwrap();
        store.write(&[put(Table::Vars, "m", b"2")]).unwrap();
        let replayed = Embedded::open(&crash_image(&dir, "image", &BOTH)).unwrap();
        assert_eq!(replayed.get(Table::Vars, "m").unwrap(), Some(b"2".to_vec()));
        assert_eq!(replayed.get(Table::Vars, "k").unwrap(), Some(b"1".to_vec()));
        drop((store, replayed));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_long_journal_is_checkpointed_and_written_from_its_start_again() {
        let (store, dir) = temp_store("wrap");
        let big = vec![7u8; 1 << 20];
        for n in 0..6 {
            store
                .write(&[put(Table::Vars, &format!("v{n}"), &big)])
                .unwrap();
        }
        store.write(&[put(Table::Vars, "last", b"x")]).unwrap();
        store.settle();
        for file in journal::file_paths(&dir.join("db.redb")) {
            let journal_len = std::fs::metadata(file).unwrap().len();
            assert_eq!(journal_len, journal::PREALLOCATED, "did not grow");
        }
        let replayed = Embedded::open(&crash_image(&dir, "image", &BOTH)).unwrap();
        for n in 0..6 {
            assert_eq!(
                replayed.get(Table::Vars, &format!("v{n}")).unwrap(),
                Some(big.clone())
            );
        }
        assert_eq!(
            replayed.get(Table::Vars, "last").unwrap(),
            Some(b"x".to_vec())
        );
        drop((store, replayed));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_crash_while_a_checkpoint_runs_replays_both_journal_files() {
        let (store, dir) = temp_store("midway");
        *writer::lock(&store.checkpoints.held) = true;
        let big = vec![3u8; 1 << 20];
        for n in 0..5 {
            store
                .write(&[put(Table::Vars, &format!("v{n}"), &big)])
                .unwrap();
        }
        // The fifth write began a checkpoint of the first four, held before
        // its transaction; these go to the other file meanwhile.
        store.write(&[put(Table::Vars, "v0", b"newer")]).unwrap();
        store
            .write(&[Write::Delete(Table::Vars, "v1".into())])
            .unwrap();
        assert_eq!(
            store.get(Table::Vars, "v0").unwrap(),
            Some(b"newer".to_vec())
        );
        assert_eq!(store.get(Table::Vars, "v2").unwrap(), Some(big.clone()));
        let alone = Embedded::open(&crash_image(&dir, "alone", &["db.redb"])).unwrap();
        assert_eq!(alone.get(Table::Vars, "v2").unwrap(), None, "held back");
        drop(alone);
        let replayed = Embedded::open(&crash_image(&dir, "image", &BOTH)).unwrap();
        assert_eq!(
            replayed.get(Table::Vars, "v0").unwrap(),
            Some(b"newer".to_vec()),
            "the newer file's record replayed after the older one's"
        );
        assert_eq!(replayed.get(Table::Vars, "v1").unwrap(), None);
        for n in 2..5 {
            assert_eq!(
                replayed.get(Table::Vars, &format!("v{n}")).unwrap(),
                Some(big.clone())
            );
        }
        *writer::lock(&store.checkpoints.held) = false;
        store.checkpoints.released.notify_all();
        drop((store, replayed));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_agree_with_every_write_across_checkpoints_and_a_restart() {
        let (store, dir) = temp_store("model");
        let mut model = std::collections::BTreeMap::new();
        let value = |n: usize| vec![(n % 251) as u8; 48 << 10];
        // ~5 checkpoints' worth of records: keys rewritten and deleted
        // while earlier layers are frozen or already in redb.
        for n in 0..450usize {
            let key = format!("k{:02}", (n * 7) % 40);
            if n % 5 == 4 {
                store.delete(Table::Vars, &key).unwrap();
                model.remove(&key);
            } else {
                store.put(Table::Vars, &key, &value(n)).unwrap();
                model.insert(key.clone(), value(n));
            }
            assert_eq!(
                store.get(Table::Vars, &key).unwrap(),
                model.get(&key).cloned()
            );
            if n % 50 == 0 {
                let scanned: std::collections::BTreeMap<_, _> =
                    store.scan(Table::Vars, "k").unwrap().into_iter().collect();
                assert_eq!(scanned, model, "after write {n}");
                // A bounded walk counts live records only.
                let ranged = store.range(Table::Vars, "k10", Some("k30"), 7).unwrap();
                let expected: Vec<_> = model
                    .range("k10".to_string().."k30".to_string())
                    .take(7)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(ranged, expected, "range after write {n}");
                let all = store.range(Table::Vars, "", None, usize::MAX).unwrap();
                assert_eq!(all.len(), model.len());
            }
        }
        drop(store);
        let store = Embedded::open(&dir.join("db.redb")).unwrap();
        let scanned: std::collections::BTreeMap<_, _> =
            store.scan(Table::Vars, "").unwrap().into_iter().collect();
        assert_eq!(scanned, model, "after a restart");
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_journal_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (store, dir) = temp_store("mode");
        for journal in journal::file_paths(&dir.join("db.redb")) {
            let mode = std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "it holds session ids, as the database does");
        }
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
